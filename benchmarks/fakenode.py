"""A synthetic node as REAL files: sysfs, /dev and the host root, in the kernel's layout.

The product is pointed at it with ``--sysfs-root``, ``--dev-root``, ``--host-root`` and
``--proc-root``; nothing here touches the machine's own /sys, /dev or /proc. The layout
follows what tests/harness/fakekernel.py builds on pyfakefs (and what the recorded q35
machines show), written with ``os`` so a separate process can read it at disk speed:

* ``sys/devices/pciDDDD:00/DDDD:00:PP.F/DDDD:BB:dd.f/``: one folder per function (root
  ports on the root bus, endpoints on the bus behind their port) with ``vendor``,
  ``device``, ``class``, ``subsystem_*``, ``revision``, ``numa_node``, ``modalias``,
  ``driver_override``, ``enable``, ``power_state``, ``uevent``, ``resource`` and BAR files,
  and the links ``driver``, ``iommu_group``, ``iommu``, ``subsystem``;
* ``sys/bus/pci/devices/BDF`` -> ``../../../devices/...`` (every function);
* ``sys/bus/pci/drivers/NAME/`` with ``bind``, ``unbind``, ``new_id``, ``remove_id``, a
  ``module`` link (not for built-in ``pcieport``) and one link per bound function;
* ``sys/kernel/iommu_groups/N/devices/BDF`` (every function in a group of its own),
  ``sys/class/iommu/dmar0``, ``sys/firmware/acpi/tables/DMAR``, ``sys/module/NAME/``;
* ``dev/vfio/vfio`` and ``dev/vfio/N`` for each group with a member on vfio-pci;
* the host root: ``proc/cmdline`` (``intel_iommu=on``), ``proc/modules``,
  ``proc/sys/kernel/osrelease``, ``boot/config-REL``, ``lib/modules/REL/modules.*``;
* on request (:func:`add_vfs`), an NPU's SR-IOV VFs beside it, with ``physfn`` and
  ``virtfnK`` links, each VF in an IOMMU group of its own.

Endpoints are spread 16 to a bus behind PCIe root ports (ARI-style function numbers), 248
root ports per PCI domain, so 8,192 endpoints fit in three domains. One endpoint in
``other_share`` (default a quarter) is not an NPU: Intel e1000e NICs and Samsung NVMe
controllers alternate, so a selector has something to skip. Plain files cannot run the
kernel's store functions: a write to this tree changes the file and nothing else, unless
it is routed to :class:`StoreFunctions` (the three files a move writes).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Optional

RELEASE = "6.1.0-bench"
NPU = (0x1EFF, 0x1220, 0x120000, "rebellions")  # RBLN-CA22
NPU_VF = 0x1221  # its VFs' device ID
NIC = (0x8086, 0x10D3, 0x020000, "e1000e")
DISK = (0x144D, 0xA808, 0x010802, "nvme")
ROOT_PORT = (0x8086, 0x7C70, 0x060400, "pcieport")
VFIO = "vfio-pci"
PER_BUS = 16  # endpoint functions behind each root port
PORTS_PER_DOMAIN = 31 * 8  # root ports at DDDD:00:01.0 .. DDDD:00:1f.7

# module -> (PCI driver it registers or None, modules it depends on), loaded on the node
_MODULES: dict[str, tuple[Optional[str], tuple[str, ...]]] = {
    "vfio": (None, ()),
    "vfio_iommu_type1": (None, ("vfio",)),
    "vfio_virqfd": (None, ()),
    "irqbypass": (None, ()),
    "vfio_pci_core": (None, ("vfio", "vfio_virqfd", "irqbypass")),
    "vfio_pci": (VFIO, ("vfio_pci_core", "vfio")),
    "rebellions": ("rebellions", ()),
    "e1000e": ("e1000e", ()),
    "nvme": ("nvme", ()),
}
_MODULE_PATHS = {
    "vfio": "kernel/drivers/vfio/vfio.ko",
    "vfio_iommu_type1": "kernel/drivers/vfio/vfio_iommu_type1.ko",
    "vfio_virqfd": "kernel/drivers/vfio/vfio_virqfd.ko",
    "irqbypass": "kernel/virt/lib/irqbypass.ko",
    "vfio_pci_core": "kernel/drivers/vfio/pci/vfio-pci-core.ko",
    "vfio_pci": "kernel/drivers/vfio/pci/vfio-pci.ko",
    "rebellions": "updates/dkms/rebellions.ko",
    "e1000e": "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko",
    "nvme": "kernel/drivers/nvme/host/nvme.ko",
}
_KERNEL_CONFIG = (
    "CONFIG_MODULES=y\nCONFIG_IOMMU_SUPPORT=y\nCONFIG_INTEL_IOMMU=y\n"
    "# CONFIG_INTEL_IOMMU_DEFAULT_ON is not set\nCONFIG_AMD_IOMMU=y\nCONFIG_VFIO=m\n"
    "CONFIG_VFIO_PCI=m\nCONFIG_VFIO_PCI_CORE=m\nCONFIG_VFIO_IOMMU_TYPE1=m\n"
    "# CONFIG_VFIO_NOIOMMU is not set\n# CONFIG_IOMMUFD is not set\n"
)


@dataclass(frozen=True)
class Function:
    bdf: str
    path: str  # relative to sys/: devices/pci0000:00/0000:00:01.0/0000:01:00.0
    vendor: int
    device: int
    pci_class: int
    driver: Optional[str]
    group: int
    numa: int

    @property
    def is_npu(self) -> bool:
        return (self.vendor, self.pci_class) == (NPU[0], NPU[2])

    @property
    def modalias(self) -> str:
        c = self.pci_class
        return (
            f"pci:v{self.vendor:08X}d{self.device:08X}sv{self.vendor:08X}sd{self.device:08X}"
            f"bc{c >> 16:02X}sc{(c >> 8) & 0xFF:02X}i{c & 0xFF:02X}"
        )


@dataclass
class FakeNode:
    """Where a generated node lives, and the CLI options that point the product at it."""

    root: str
    functions: list[Function] = field(default_factory=list)

    @property
    def sys_root(self) -> str:
        return os.path.join(self.root, "sys")

    @property
    def dev_root(self) -> str:
        return os.path.join(self.root, "dev")

    @property
    def host_root(self) -> str:
        return os.path.join(self.root, "host")

    @property
    def state_dir(self) -> str:
        return os.path.join(self.root, "state")

    @property
    def empty_proc(self) -> str:
        """A /proc with no processes: the in-use scan finds nothing and costs nothing."""
        return os.path.join(self.root, "proc-empty")

    @property
    def npus(self) -> list[Function]:
        return [f for f in self.functions if f.is_npu]

    def cli_args(self, proc_root: Optional[str] = None) -> list[str]:
        """Global options of ``vfio-manager`` (before the command) for this node."""
        return [
            "--sysfs-root",
            self.sys_root,
            "--dev-root",
            self.dev_root,
            "--host-root",
            self.host_root,
            "--state-dir",
            self.state_dir,
            "--proc-root",
            proc_root or self.empty_proc,
        ]


def _kinds(endpoints: int, other_share: float) -> Iterator[tuple[int, int, int, str]]:
    """Endpoint identities in address order; the others spread evenly among the NPUs."""
    others = round(endpoints * other_share)
    placed = 0
    for index in range(endpoints):
        due = (index + 1) * others // endpoints if endpoints else 0
        if due > placed:
            placed += 1
            yield NIC if placed % 2 else DISK
        else:
            yield NPU


def plan_functions(
    endpoints: int, *, other_share: float = 0.25, npu_driver: Optional[str] = "rebellions"
) -> list[Function]:
    """Root ports and endpoints, each in its own IOMMU group, in address order."""
    functions: list[Function] = []
    group = 0
    kinds = iter(list(_kinds(endpoints, other_share)))
    ports = (endpoints + PER_BUS - 1) // PER_BUS
    for port in range(ports):
        domain, slot = divmod(port, PORTS_PER_DOMAIN)
        port_bdf = f"{domain:04x}:00:{1 + slot // 8:02x}.{slot % 8}"
        port_path = f"devices/pci{domain:04x}:00/{port_bdf}"
        functions.append(Function(port_bdf, port_path, *ROOT_PORT[:3], ROOT_PORT[3], group, domain))
        group += 1
        bus = 1 + slot
        for devfn in range(min(PER_BUS, endpoints - port * PER_BUS)):
            vendor, device, pci_class, native = next(kinds)
            driver = npu_driver if (vendor, pci_class) == (NPU[0], NPU[2]) else native
            bdf = f"{domain:04x}:{bus:02x}:{devfn >> 3:02x}.{devfn & 7}"
            functions.append(
                Function(
                    bdf, f"{port_path}/{bdf}", vendor, device, pci_class, driver, group, domain
                )
            )
            group += 1
    return functions


class _Writer:
    def __init__(self, base: str) -> None:
        self.base = base
        self.made: set[str] = set()

    def mkdir(self, rel: str) -> str:
        path = os.path.join(self.base, rel)
        if path not in self.made:
            os.makedirs(path, exist_ok=True)
            self.made.add(path)
        return path

    def file(self, rel: str, text: str = "") -> None:
        folder, _ = os.path.split(rel)
        self.mkdir(folder)
        with open(os.path.join(self.base, rel), "w", encoding="utf-8") as handle:
            handle.write(text)

    def link(self, rel: str, target: str) -> None:
        folder, _ = os.path.split(rel)
        self.mkdir(folder)
        os.symlink(target, os.path.join(self.base, rel))


def _write_function(w: _Writer, fn: Function, vfio_index: Optional[int]) -> None:
    d = f"sys/{fn.path}"
    ups = "../" * (fn.path.count("/") + 1)  # from the function's folder up to sys/
    override = VFIO if fn.driver == VFIO else "(null)"
    on_vfio = fn.driver == VFIO
    attrs = {
        "vendor": f"0x{fn.vendor:04x}",
        "device": f"0x{fn.device:04x}",
        "class": f"0x{fn.pci_class:06x}",
        "subsystem_vendor": f"0x{fn.vendor:04x}",
        "subsystem_device": f"0x{fn.device:04x}",
        "revision": "0x01",
        "numa_node": str(fn.numa),
        "modalias": fn.modalias,
        "driver_override": override,
        "enable": "0" if on_vfio or fn.driver is None else "1",
        "power_state": "D3hot" if on_vfio else "D0",
        "irq": "16",
        "local_cpulist": "0-63",
        "d3cold_allowed": "1",
    }
    for name, value in attrs.items():
        w.file(f"{d}/{name}", value + "\n")
    uevent = [f"DRIVER={fn.driver}"] if fn.driver else []
    uevent += [
        f"PCI_CLASS={fn.pci_class:X}",
        f"PCI_ID={fn.vendor:04X}:{fn.device:04X}",
        f"PCI_SLOT_NAME={fn.bdf}",
        f"MODALIAS={fn.modalias}",
    ]
    w.file(f"{d}/uevent", "\n".join(uevent) + "\n")
    for name in ("config", "remove", "rescan", "reset", "resource"):
        w.file(f"{d}/{name}")
    if fn.pci_class != ROOT_PORT[2]:
        for bar in ("resource0", "resource2", "resource2_wc"):
            w.file(f"{d}/{bar}")
    w.link(f"{d}/subsystem", ups + "bus/pci")
    w.link(f"{d}/iommu", "../" * fn.path.count("/") + "virtual/iommu/dmar0")
    w.link(f"{d}/iommu_group", ups + f"kernel/iommu_groups/{fn.group}")
    group = f"sys/kernel/iommu_groups/{fn.group}"
    w.file(f"{group}/type", "DMA-FQ\n")
    w.file(f"{group}/reserved_regions")
    w.link(f"{group}/devices/{fn.bdf}", "../../../../" + fn.path)
    w.link(f"sys/bus/pci/devices/{fn.bdf}", "../../../" + fn.path)
    if fn.driver is not None:
        w.link(f"{d}/driver", ups + f"bus/pci/drivers/{fn.driver}")
        w.link(f"sys/bus/pci/drivers/{fn.driver}/{fn.bdf}", "../../../../" + fn.path)
    if vfio_index is not None:
        w.file(f"{d}/vfio-dev/vfio{vfio_index}/dev", f"511:{vfio_index}\n")
        w.file(f"dev/vfio/{fn.group}")


def _write_drivers_and_modules(w: _Writer) -> None:
    drivers: dict[str, Optional[str]] = {
        VFIO: "vfio_pci",
        "rebellions": "rebellions",
        "e1000e": "e1000e",
        "nvme": "nvme",
        "pcieport": None,  # built in: no module link
    }
    for name, owner in drivers.items():
        base = f"sys/bus/pci/drivers/{name}"
        for entry in ("bind", "unbind", "new_id", "remove_id", "uevent"):
            w.file(f"{base}/{entry}")
        if owner is not None:
            w.link(f"{base}/module", f"../../../../module/{owner}")
    for module, (driver, _deps) in _MODULES.items():
        base = f"sys/module/{module}"
        w.file(f"{base}/initstate", "live\n")
        w.file(f"{base}/refcnt", "0\n")
        w.mkdir(f"{base}/holders")
        if driver is not None:
            w.link(f"{base}/drivers/pci:{driver}", f"../../../bus/pci/drivers/{driver}")
    for name in ("disable_denylist", "disable_idle_d3", "enable_sriov"):
        w.file(f"sys/module/vfio_pci/parameters/{name}", "N\n")
    w.file("sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts", "N\n")


def _write_bus_and_iommu(w: _Writer) -> None:
    for name, text in (("drivers_probe", ""), ("drivers_autoprobe", "1\n"), ("rescan", "")):
        w.file(f"sys/bus/pci/{name}", text)
    w.mkdir("sys/bus/pci/slots")
    w.mkdir("sys/devices/virtual/iommu/dmar0")
    w.link("sys/class/iommu/dmar0", "../../devices/virtual/iommu/dmar0")
    w.file("sys/firmware/acpi/tables/DMAR", "DMAR")
    w.file("dev/vfio/vfio")


def _alias(vendor: int, device: int) -> str:
    return f"pci:v{vendor:08X}d{device:08X}sv*sd*bc*sc*i*"


def _write_host(w: _Writer) -> None:
    h = "host"
    w.file(
        f"{h}/proc/cmdline",
        f"BOOT_IMAGE=/boot/vmlinuz-{RELEASE} root=/dev/sda1 ro quiet intel_iommu=on iommu=pt\n",
    )
    w.file(f"{h}/proc/sys/kernel/osrelease", RELEASE + "\n")
    w.file(f"{h}/proc/cpuinfo", "processor\t: 0\nvendor_id\t: GenuineIntel\n\n")
    lines = []
    for index, module in enumerate(reversed(list(_MODULES))):
        users = [m for m, (_d, needs) in _MODULES.items() if module in needs]
        used = ",".join(users) + "," if users else "-"
        lines.append(f"{module} 16384 {len(users)} {used} Live 0x{0xFFFFFFFFC0800000 - index:016x}")
    w.file(f"{h}/proc/modules", "\n".join(lines) + "\n")
    w.file(f"{h}/boot/config-{RELEASE}", f"# Linux/x86 {RELEASE} (benchmark)\n{_KERNEL_CONFIG}")
    base = f"{h}/lib/modules/{RELEASE}"
    aliases = [
        f"alias {_alias(NPU[0], NPU[1])} rebellions",
        f"alias {_alias(NPU[0], NPU_VF)} rebellions",
        f"alias {_alias(NIC[0], NIC[1])} e1000e",
        "alias pci:v*d*sv*sd*bc01sc08i02 nvme",
        "alias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci",
    ]
    w.file(
        f"{base}/modules.alias",
        "# Aliases extracted from modules themselves.\n" + "\n".join(aliases) + "\n",
    )
    w.file(f"{base}/modules.builtin.alias", "\n")
    w.file(f"{base}/modules.builtin", "kernel/drivers/pci/pcie/portdrv.ko\n")
    deps = [
        f"{_MODULE_PATHS[m]}: {' '.join(_MODULE_PATHS[d] for d in needs)}".rstrip()
        for m, (_d, needs) in _MODULES.items()
    ]
    w.file(f"{base}/modules.dep", "\n".join(deps) + "\n")
    w.mkdir(f"{h}/etc/modprobe.d")
    # never run: every module the product could ask for is loaded already
    w.file(
        f"{h}/sbin/modprobe",
        "#!/bin/sh\necho 'benchmark node: modprobe must not run' >&2\nexit 1\n",
    )


def converge(node: FakeNode) -> FakeNode:
    """Move every NPU of a generated node to vfio-pci in place, as a finished bind leaves it
    (the kernel's store functions, :class:`StoreFunctions`, make the changes)."""
    store = StoreFunctions(node, probe_delay=0.0)
    for fn in node.npus:
        if fn.driver != VFIO:
            store.rebind(fn, VFIO)
    node.functions = [replace(f, driver=VFIO) if f.is_npu else f for f in node.functions]
    return node


def generate(
    root: str,
    endpoints: int,
    *,
    other_share: float = 0.25,
    npu_driver: Optional[str] = "rebellions",
) -> FakeNode:
    """Write a node of ``endpoints`` endpoint functions (plus their root ports) under ``root``.

    ``npu_driver``: ``"rebellions"`` (native), ``"vfio-pci"`` (converged: override set,
    ``/dev/vfio/N`` present) or ``None`` (unbound). ``root`` must not exist or be empty.
    """
    if os.path.exists(root) and os.listdir(root):
        raise FileExistsError(f"{root} is not empty")
    node = FakeNode(root, plan_functions(endpoints, other_share=other_share, npu_driver=npu_driver))
    w = _Writer(root)
    _write_bus_and_iommu(w)
    _write_drivers_and_modules(w)
    _write_host(w)
    vfio_index = 0
    for fn in node.functions:
        index = None
        if fn.driver == VFIO:
            index, vfio_index = vfio_index, vfio_index + 1
        _write_function(w, fn, index)
    w.mkdir("state")
    w.mkdir("proc-empty")
    return node


def add_vfs(node: FakeNode, pf: Function, count: int) -> list[Function]:
    """Give the NPU ``pf`` ``count`` VFs on its native driver, as ``sriov_numvfs`` would.

    VF ``k`` of the PF at devfn ``d`` is on bus ``0x80 + d`` (its ``k``-th function) beside
    the PF under its root port (routing IDs behind the PF's, as a VF offset puts them), in a
    new IOMMU group. So the PFs given VFs must have distinct devfns in a domain (up to 16 on
    one node: the endpoints of one bus).
    """
    w = _Writer(node.root)
    domain, _bus, devfn = pf.bdf.split(":")
    slot, func = devfn.split(".")
    bus = 0x80 + int(slot, 16) * 8 + int(func)
    if any(f.bdf.startswith(f"{domain}:{bus:02x}:") for f in node.functions):
        raise ValueError(f"bus {domain}:{bus:02x} has functions already: {pf.bdf}'s VFs go there")
    port_path = pf.path.rsplit("/", 1)[0]
    group = max(f.group for f in node.functions) + 1
    vfs = []
    for k in range(count):
        bdf = f"{domain}:{bus:02x}:{k >> 3:02x}.{k & 7}"
        vf = Function(
            bdf, f"{port_path}/{bdf}", NPU[0], NPU_VF, NPU[2], pf.driver, group + k, pf.numa
        )
        _write_function(w, vf, None)
        w.link(f"sys/{vf.path}/physfn", f"../{pf.bdf}")
        w.link(f"sys/{pf.path}/virtfn{k}", f"../{bdf}")
        vfs.append(vf)
    for name, value in (
        ("sriov_totalvfs", "64"),
        ("sriov_numvfs", str(count)),
        ("sriov_drivers_autoprobe", "1"),
        ("sriov_vf_device", f"{NPU_VF:04x}"),
    ):
        w.file(f"sys/{pf.path}/{name}", value + "\n")
    node.functions += vfs
    return vfs


class StoreFunctions:
    """What the kernel does on a write to ``driver_override``, a driver's ``unbind`` and
    ``bind``, and ``drivers_probe``, done to a generated node's files; a probe by
    ``slow_driver`` first sleeps ``probe_delay`` seconds, as a driver loading firmware does.

    :meth:`write` has the signature of the product's writer (``path, payload, opened``), so
    its writer children run it in place of the write syscall, blocking for the probe as the
    kernel would. It keeps no state of its own (the files are the state): forked children
    share nothing else. Other files refuse the write (EPERM): a move writes no others.
    """

    def __init__(self, node: FakeNode, *, probe_delay: float, slow_driver: str = VFIO) -> None:
        self.sys_root = node.sys_root
        self.dev_root = node.dev_root
        self.functions = {f.bdf: f for f in node.functions}
        self.probe_delay, self.slow_driver = probe_delay, slow_driver

    def write(self, path: str, payload: bytes, opened: object = None) -> None:
        if callable(opened):
            opened()
        parts = os.path.relpath(path, self.sys_root).split("/")
        text = payload.decode().strip()
        if parts[:3] == ["bus", "pci", "devices"] and parts[4:] == ["driver_override"]:
            self._put(self.functions[parts[3]], "driver_override", text or "(null)")
        elif parts == ["bus", "pci", "drivers_probe"]:
            self._probe(self._function(text), None)
        elif parts[:3] == ["bus", "pci", "drivers"] and parts[4:] == ["unbind"]:
            self._unbind(self._function(text), parts[3])
        elif parts[:3] == ["bus", "pci", "drivers"] and parts[4:] == ["bind"]:
            self._probe(self._function(text), parts[3])
        else:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM), path)

    def rebind(self, fn: Function, driver: Optional[str]) -> None:
        """The three writes of a move: ``driver`` as the override (``None`` clears it), an
        unbind from the driver it has, a probe."""
        devices = os.path.join(self.sys_root, "bus/pci/devices", fn.bdf)
        self.write(os.path.join(devices, "driver_override"), (driver or "").encode() + b"\n")
        bound = self._driver(fn)
        if bound is not None:
            unbind = os.path.join(self.sys_root, "bus/pci/drivers", bound, "unbind")
            self.write(unbind, fn.bdf.encode())
        self.write(os.path.join(self.sys_root, "bus/pci/drivers_probe"), fn.bdf.encode())

    def _function(self, bdf: str) -> Function:
        if bdf not in self.functions:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        return self.functions[bdf]

    def _dir(self, fn: Function) -> str:
        return os.path.join(self.sys_root, fn.path)

    def _put(self, fn: Function, name: str, value: str) -> None:
        with open(os.path.join(self._dir(fn), name), "w", encoding="ascii") as handle:
            handle.write(value + "\n")

    def _driver(self, fn: Function) -> Optional[str]:
        try:
            return os.path.basename(os.readlink(os.path.join(self._dir(fn), "driver")))
        except FileNotFoundError:
            return None

    def _unbind(self, fn: Function, driver: str) -> None:
        if self._driver(fn) != driver:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        os.unlink(os.path.join(self.sys_root, "bus/pci/drivers", driver, fn.bdf))
        os.unlink(os.path.join(self._dir(fn), "driver"))
        if driver == VFIO:
            vfio_dev = os.path.join(self._dir(fn), "vfio-dev")
            for name in os.listdir(vfio_dev):
                os.unlink(os.path.join(vfio_dev, name, "dev"))
                os.rmdir(os.path.join(vfio_dev, name))
            os.unlink(os.path.join(self.dev_root, f"vfio/{fn.group}"))
        self._put(fn, "enable", "0")

    def _probe(self, fn: Function, driver: Optional[str]) -> None:
        """Bind ``driver`` (a bind file), else the override, else the native driver."""
        if self._driver(fn) is not None:
            if driver is None:
                return  # drivers_probe on a bound device: nothing, no error
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        with open(os.path.join(self._dir(fn), "driver_override"), encoding="ascii") as handle:
            override = handle.read().strip()
        chosen = override if override != "(null)" else driver or _native(fn)
        if driver is not None and chosen != driver:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        if chosen == self.slow_driver:
            time.sleep(self.probe_delay)
        ups = "../" * (fn.path.count("/") + 1)
        os.symlink(ups + f"bus/pci/drivers/{chosen}", os.path.join(self._dir(fn), "driver"))
        os.symlink(
            "../../../../" + fn.path,
            os.path.join(self.sys_root, "bus/pci/drivers", chosen, fn.bdf),
        )
        if chosen == VFIO:
            self._put(fn, "power_state", "D3hot")
            os.makedirs(os.path.join(self._dir(fn), f"vfio-dev/vfio{fn.group}"))
            with open(os.path.join(self._dir(fn), f"vfio-dev/vfio{fn.group}/dev"), "w") as dev:
                dev.write(f"511:{fn.group}\n")
            open(os.path.join(self.dev_root, f"vfio/{fn.group}"), "w").close()
        else:
            self._put(fn, "enable", "1")
            self._put(fn, "power_state", "D0")


def _native(fn: Function) -> str:
    return next(kind[3] for kind in (NPU, NIC, DISK, ROOT_PORT) if kind[0] == fn.vendor)

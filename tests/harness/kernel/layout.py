"""The pyfakefs tree: the machine's fixed folders and files, and each function's folder.

Everything lives under ``host_root`` (``/node`` by default, never ``/``): ``/node/sys``,
``/node/dev``, ``/node/proc``, ``/node/lib/modules/<release>``, ``/node/boot``. Files whose
content comes from the model are :class:`~tests.harness.sysfsfile.KernelFile` objects: a
read calls a show function (here, or in the rule module that owns the file), a write goes
through tests/harness/kernel/writes.py to the file's rule (routes.py says which).

Formats are the kernel's (docs/kernel-facts.md K1, K2, K14, K19, K20, K22): attributes as
drivers/pci/pci-sysfs.c prints them, links relative with the depth of the real folder.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from typing import Optional

from tests.harness.kernel import driver_override, drivers_probe, iommu_groups, modules, writes
from tests.harness.kernel.model import DRIVER_CHILD_RE, Function
from tests.harness.kernel.state import KernelState
from tests.harness.kernel.tree import const, line
from tests.harness.pci import config_space, default_header_type, parse_bdf

_BDF_NAME_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_DIR_ENTRY_RE = re.compile(r"^(power|msi_irqs|link|pci_bus|virtio\d+|net|ptp|wakeup|.*:pcie\d+)$")
_DYNAMIC_ATTRS = frozenset(
    {"driver_override", "enable", "power_state", "sriov_numvfs", "sriov_drivers_autoprobe"}
)
_MODELLED_ENTRIES = frozenset(
    {
        "driver",
        "iommu_group",
        "iommu",
        "subsystem",
        "physfn",
        "vfio-dev",
        "uevent",
        "config",
        "remove",
        "rescan",
        "reset",
        *_DYNAMIC_ATTRS,
    }
)
# bus/pci files, each with a rule in routes.py (drivers_probe and drivers_autoprobe: K6)
BUS_FILES = ("drivers_probe", "drivers_autoprobe", "rescan", "resource_alignment", "uevent")


def default_cmdline(release: str, iommu: bool, iommu_unit: str) -> str:
    """/proc/cmdline of a host set up for VFIO (K22): ``intel_iommu=on`` on Intel only."""
    args = f"BOOT_IMAGE=/boot/vmlinuz-{release} root=/dev/sda1 ro quiet"
    if iommu:
        args += " intel_iommu=on iommu=pt" if not iommu_unit.startswith("ivhd") else ""
    return args


# ---------------------------------------------------------------------- the machine
def build(s: KernelState, *, lib_modules: bool) -> None:
    """The folders and files every machine has, before any function or driver."""
    s.fs.chmod("/", 0o755)  # root's and private, as on a machine (pyfakefs makes it 0777)
    pci = "bus/pci"
    for rel in (
        f"{pci}/devices",
        f"{pci}/drivers",
        f"{pci}/slots",
        "devices",
        "kernel/iommu_groups",
        "class/iommu",
        "module",
        "firmware/acpi/tables",
    ):
        s.tree.mkdir(s.sys_path(rel))
    shows: dict[str, Optional[Callable[[], bytes]]] = {
        "drivers_probe": None,
        "drivers_autoprobe": lambda: drivers_probe.autoprobe_show(s),
        "rescan": None,
        "resource_alignment": const("\n"),
        "uevent": None,
    }
    for name in BUS_FILES:
        s.tree.file(s.sys_path(f"{pci}/{name}"), shows[name], writes.store(s, f"{pci}/{name}"))
    if s.iommu:  # K22: an IOMMU unit in class/iommu, its ACPI table
        unit_dir = f"devices/virtual/iommu/{s.iommu_unit}"
        s.tree.mkdir(s.sys_path(unit_dir))
        s.tree.link(s.sys_path(f"class/iommu/{s.iommu_unit}"), f"../../{unit_dir}")
        table = "IVRS" if s.iommu_unit.startswith("ivhd") else "DMAR"
        s.tree.file(s.sys_path(f"firmware/acpi/tables/{table}"), const(table.encode()))
    s.tree.mkdir(s.dev_root)
    proc = s.proc_root
    s.tree.file(f"{proc}/cmdline", lambda: line(s.cmdline.rstrip("\n")))
    if s.modules_supported:
        s.tree.file(posixpath.join(proc, "modules"), lambda: modules.render_proc_modules(s))
    s.tree.file(f"{proc}/sys/kernel/osrelease", lambda: line(s.release))
    s.tree.file(posixpath.join(proc, "cpuinfo"), lambda: _render_cpuinfo(s))
    s.tree.file(s.host_path(f"boot/config-{s.release}"), lambda: _render_config(s))
    s.tree.mkdir(s.host_path("etc/modprobe.d"))
    s.tree.file(s.host_path("sbin/modprobe"), const("#!/bin/sh\n# fake: FakeKernel.run_modprobe\n"))
    if lib_modules:
        base = f"lib/modules/{s.release}"
        s.tree.file(s.host_path(f"{base}/modules.alias"), lambda: modules.render_alias(s, False))
        s.tree.file(
            s.host_path(f"{base}/modules.builtin.alias"), lambda: modules.render_alias(s, True)
        )
        s.tree.file(s.host_path(f"{base}/modules.builtin"), lambda: modules.render_builtin(s))
        s.tree.file(s.host_path(f"{base}/modules.dep"), lambda: modules.render_dep(s))


def _render_cpuinfo(s: KernelState) -> bytes:
    text = f"processor\t: 0\nvendor_id\t: {s.cpu_vendor}\nmodel name\t: Fake CPU\n\n"
    return text.encode()


def _render_config(s: KernelState) -> bytes:
    lines = [f"# Linux/x86 {s.release} Kernel Configuration (fake)"]
    for key, value in s.kernel_config.items():
        lines.append(f"# {key} is not set" if value == "n" else f"{key}={value}")
    return ("\n".join(lines) + "\n").encode()


# ---------------------------------------------------------------------- functions
def new_function(
    s: KernelState,
    bdf: str,
    *,
    vendor: int,
    device: int,
    pci_class: int,
    subsystem_vendor: int = 0,
    subsystem_device: int = 0,
    iommu_group: Optional[int] = None,
    parent: Optional[str] = None,
    numa_node: int = -1,
    revision: int = 0,
    sriov_totalvfs: Optional[int] = None,
    boot_vga: Optional[bool] = None,
    header_type: Optional[int] = None,
    driver_override: Optional[str] = None,
    sriov_vf_device: Optional[int] = None,
    path: Optional[str] = None,
    attrs: Optional[dict[str, str]] = None,
    entries: Optional[set[str]] = None,
    links: Optional[dict[str, str]] = None,
    physfn: Optional[str] = None,
) -> Function:
    """A function in the model and its folder, unbound, in its group (K14).

    ``attrs``/``entries``/``links`` come from a recorded machine: its attribute values and
    the names the model does not know are kept (see :func:`_snapshot_extras`).
    """
    domain, bus, _devfn = parse_bdf(bdf)
    if bdf in s.function_table:
        raise ValueError(f"{bdf} already exists")
    if path is None:
        if parent is not None:
            if parent not in s.function_table:
                raise ValueError(f"parent {parent} of {bdf} does not exist")
            path = f"{s.function_table[parent].path}/{bdf}"
        else:
            path = f"devices/pci{domain:04x}:{bus:02x}/{bdf}"
    s.tree.mkdir(s.sys_path(posixpath.dirname(path)))
    fn = Function(
        bdf=bdf,
        vendor=vendor,
        device=device,
        pci_class=pci_class,
        subsystem_vendor=subsystem_vendor,
        subsystem_device=subsystem_device,
        revision=revision,
        numa_node=numa_node,
        header_type=header_type if header_type is not None else default_header_type(pci_class),
        group=iommu_group if s.iommu else None,
        path=path,
        parent=parent,
        override=driver_override,
        sriov_totalvfs=sriov_totalvfs,
        sriov_vf_device=sriov_vf_device if sriov_vf_device is not None else device + 1,
        physfn=physfn,
    )
    s.function_table[bdf] = fn
    _function_folder(s, fn, attrs=attrs, entries=entries, links=links, boot_vga=boot_vga)
    s.tree.link(s.sys_path(f"bus/pci/devices/{bdf}"), "../../../" + path)
    iommu_groups.join_group(s, fn)
    return fn


def _function_folder(
    s: KernelState,
    fn: Function,
    *,
    attrs: Optional[dict[str, str]],
    entries: Optional[set[str]],
    links: Optional[dict[str, str]],
    boot_vga: Optional[bool],
) -> None:
    """The function's folder: attributes, kernel files, links (and a snapshot's extras)."""
    d = s.sys_path(fn.path)
    s.tree.mkdir(d)
    static = _static_attrs(fn, attrs, snapshot=entries is not None, boot_vga=boot_vga)
    for name, value in static.items():
        s.tree.file(f"{d}/{name}", const(value + "\n"))
    _kernel_files(s, fn, want=(lambda _n: True) if entries is None else entries.__contains__)
    if fn.sriov_totalvfs is not None:
        sriov_files(s, fn, static=entries is None)
    ups = "../" * fn.depth
    s.tree.link(f"{d}/subsystem", ups + "bus/pci")
    if s.iommu and fn.group is not None:
        s.tree.link(f"{d}/iommu", "../" * (fn.depth - 1) + f"virtual/iommu/{s.iommu_unit}")
    if fn.physfn is not None:
        s.tree.link(f"{d}/physfn", f"../{fn.physfn}")
    modelled = _MODELLED_ENTRIES | set(static)
    for name, target in (links or {}).items():
        if name not in modelled and not name.startswith("virtfn"):
            s.tree.link(f"{d}/{name}", target)
    if entries is not None:
        _snapshot_extras(
            s, fn, entries - modelled - set(links or {}), bound=bool((links or {}).get("driver"))
        )


def _static_attrs(
    fn: Function, attrs: Optional[dict[str, str]], *, snapshot: bool, boot_vga: Optional[bool]
) -> dict[str, str]:
    static: dict[str, str] = {
        "vendor": f"0x{fn.vendor:04x}",
        "device": f"0x{fn.device:04x}",
        "class": f"0x{fn.pci_class:06x}",
        "subsystem_vendor": f"0x{fn.subsystem_vendor:04x}",
        "subsystem_device": f"0x{fn.subsystem_device:04x}",
        "revision": f"0x{fn.revision:02x}",
        "numa_node": str(fn.numa_node),
        "modalias": fn.modalias,
    }
    if not snapshot:
        static.update(
            {
                "irq": "0",
                "local_cpulist": "0-1",
                "msi_bus": "1",
                "broken_parity_status": "0",
                "ari_enabled": "0",
                "d3cold_allowed": "1",
            }
        )
        if boot_vga is not None:
            static["boot_vga"] = "1" if boot_vga else "0"
    for name, value in (attrs or {}).items():
        if name not in _DYNAMIC_ATTRS:
            static[name] = value
    return static


def _kernel_files(s: KernelState, fn: Function, *, want: Callable[[str], bool]) -> None:
    """The files whose content or write comes from the model (rules: routes.py)."""
    d = s.sys_path(fn.path)
    rel = f"bus/pci/devices/{fn.bdf}"
    s.tree.file(
        f"{d}/driver_override",
        lambda: driver_override.show(fn),
        writes.store(s, f"{rel}/driver_override"),
    )
    if want("enable"):
        s.tree.file(f"{d}/enable", lambda: line("1" if _enabled(s, fn) else "0"))
    if want("power_state"):
        s.tree.file(f"{d}/power_state", lambda: line(fn.power_state))
    if want("uevent"):
        s.tree.file(f"{d}/uevent", lambda: _uevent(fn), writes.store(s, f"{rel}/uevent"))
    if want("config"):
        space = config_space(
            vendor=fn.vendor,
            device=fn.device,
            revision=fn.revision,
            pci_class=fn.pci_class,
            header_type=fn.header_type,
            subvendor=fn.subsystem_vendor,
            subdevice=fn.subsystem_device,
            vf=fn.physfn is not None,
        )
        # a function that stopped responding reads all-ones (K27); sysfs keeps its cached IDs
        s.tree.file(f"{d}/config", lambda: space if fn.responding else b"\xff" * len(space))
    for name in ("remove", "rescan", "reset"):  # write-only (K18)
        if want(name):
            s.tree.file(f"{d}/{name}", None, writes.store(s, f"{rel}/{name}"))


def sriov_files(s: KernelState, pf: Function, *, static: bool) -> None:
    """A PF's SR-IOV attributes (K17); ``static=False`` when a snapshot brought its own."""
    d = s.sys_path(pf.path)
    rel = f"bus/pci/devices/{pf.bdf}"
    if static:
        for name, value in (
            ("sriov_totalvfs", str(pf.sriov_totalvfs)),
            ("sriov_offset", str(pf.sriov_offset)),
            ("sriov_stride", str(pf.sriov_stride)),
            ("sriov_vf_device", f"{pf.sriov_vf_device:x}"),
        ):
            s.tree.file(f"{d}/{name}", const(value + "\n"))
    s.tree.file(
        f"{d}/sriov_numvfs", lambda: line(str(len(pf.vfs))), writes.store(s, f"{rel}/sriov_numvfs")
    )
    s.tree.file(
        f"{d}/sriov_drivers_autoprobe",
        lambda: line("1" if pf.sriov_autoprobe else "0"),
        writes.store(s, f"{rel}/sriov_drivers_autoprobe"),
    )


def _snapshot_extras(s: KernelState, fn: Function, names: set[str], *, bound: bool) -> None:
    """A recorded machine's entries the model does not know: empty files or folders."""
    d = s.sys_path(fn.path)
    fn.waiting_for_supplier = "waiting_for_supplier" in names
    if fn.waiting_for_supplier:
        s.tree.file(f"{d}/waiting_for_supplier", const("0\n"))
    for name in sorted(names - {"waiting_for_supplier"}):
        if name.startswith("virtfn") or _BDF_NAME_RE.match(name):
            continue  # VF links and child functions are created by the model
        if bound and DRIVER_CHILD_RE.match(name):
            continue  # created by binding.attach for the bound driver
        if _DIR_ENTRY_RE.match(name):
            s.tree.mkdir(f"{d}/{name}")
        else:
            s.tree.file(f"{d}/{name}", const(b""))


def _enabled(s: KernelState, fn: Function) -> bool:
    # K20: the kernel shows enable_cnt > 0; a native driver enables its device, vfio-pci
    # only while the device is open (K26). Matches every function in the q35 snapshots.
    drv = s.driver_table.get(fn.driver) if fn.driver else None
    return drv is not None and (not drv.vfio or fn.user_open)


def _uevent(fn: Function) -> bytes:
    """devices/BDF/uevent (K19): ``DRIVER=`` first while bound, then the IDs."""
    lines = [f"DRIVER={fn.driver}"] if fn.driver else []
    lines += [
        f"PCI_CLASS={fn.pci_class:X}",
        f"PCI_ID={fn.vendor:04X}:{fn.device:04X}",
        f"PCI_SUBSYS_ID={fn.subsystem_vendor:04X}:{fn.subsystem_device:04X}",
        f"PCI_SLOT_NAME={fn.bdf}",
        f"MODALIAS={fn.modalias}",
    ]
    return ("\n".join(lines) + "\n").encode()

"""A fake Linux PCI/VFIO kernel on pyfakefs, for the product's tests.

Everything lives under ``host_root`` (``/node`` by default, never ``/``): ``/node/sys``,
``/node/dev``, ``/node/proc``, ``/node/lib/modules/<release>``, ``/node/boot``. The model
(functions, drivers, modules, IOMMU groups) is kept in Python objects; the files the product
reads are :class:`~tests.harness.sysfsfile.KernelFile` objects whose content is computed from
the model, and writes to the writable ones run the kernel's store functions below.

The rules come from /work/shared/reference/kernel-binding-facts.md and the 6.1 sources
(drivers/base/bus.c bind_store/unbind_store/drivers_probe_store, drivers/base/dd.c,
drivers/base/driver.c driver_set_override, drivers/pci/pci-driver.c pci_match_device and
new_id/remove_id, drivers/pci/iov.c sriov_numvfs_store, drivers/vfio/pci). Each rule has a
test in tests/harness_tests. Places where the model simplifies or where the real kernel is
uncertain are marked ``DOUBT:`` so the QEMU tier can check them.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import stat
import threading
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Optional, Union

from pyfakefs.fake_file import FakeDirectory, FakeFile
from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness.pci import (
    PCI_ANY_ID,
    alias_pattern,
    config_space,
    default_header_type,
    format_bdf,
    modalias,
    normalize_module,
    parse_bdf,
)
from tests.harness.sysfsfile import KernelFile, Show, Store

PAGE_SIZE = 4096
VFIO_GROUP_MAJOR = 242  # dynamic on a real kernel; only shown in vfio-dev/vfioK/dev


class Write(NamedTuple):
    """One write the product made to a kernel file.

    ``path`` is relative to ``sys_root`` and canonical: device attributes as
    ``bus/pci/devices/BDF/ATTR`` whichever path was opened, driver files as
    ``bus/pci/drivers/NAME/FILE``, bus files as ``bus/pci/drivers_probe``. ``data`` is what
    the kernel received (decoded), ``error`` the errno the write returned, ``None`` on success.
    """

    path: str
    data: str
    error: Optional[int]


class UnbindGate(threading.Event):
    """Returned by :meth:`FakeKernel.block_unbind`: ``set()`` lets the blocked unbind finish.

    ``entered`` is set when the writer's thread has reached the kernel and is blocked, so a
    test can wait for it (with a timeout) instead of sleeping.
    """

    def __init__(self, bdf: str) -> None:
        super().__init__()
        self.bdf = bdf
        self.entered = threading.Event()


class UnknownModuleError(LookupError):
    """``load_module`` of a module that is neither declared nor built in (modprobe: not found)."""


class ModuleInUseError(RuntimeError):
    """``unload_module`` of a module other loaded modules depend on (rmmod: in use)."""


@dataclass
class DynId:
    """An entry added through drivers/NAME/new_id (struct pci_device_id, dynamic)."""

    vendor: int
    device: int
    subvendor: int = PCI_ANY_ID
    subdevice: int = PCI_ANY_ID
    pci_class: int = 0
    class_mask: int = 0

    def matches(self, fn: Function) -> bool:
        return (
            self.vendor in (PCI_ANY_ID, fn.vendor)
            and self.device in (PCI_ANY_ID, fn.device)
            and self.subvendor in (PCI_ANY_ID, fn.subsystem_vendor)
            and self.subdevice in (PCI_ANY_ID, fn.subsystem_device)
            and not ((self.pci_class ^ fn.pci_class) & self.class_mask)
        )


@dataclass
class DriverSpec:
    """What a module registers when it loads."""

    name: str
    ids: tuple[tuple[int, int], ...] = ()
    classes: tuple[tuple[int, int], ...] = ()
    vfio: bool = False
    dma_safe: bool = False


@dataclass
class Driver:
    name: str
    module: Optional[str]
    ids: list[tuple[int, int]]
    classes: list[tuple[int, int]]
    vfio: bool
    dma_safe: bool
    dyn_ids: list[DynId] = field(default_factory=list)

    @property
    def sriov_configure(self) -> bool:
        # DOUBT: vfio-pci has sriov_configure only with enable_sriov=Y; native drivers are
        # assumed to implement it.
        return not self.vfio


@dataclass
class Module:
    name: str
    path: str  # relative to /lib/modules/<release>
    builtin: bool = False
    deps: list[str] = field(default_factory=list)  # direct dependencies, modprobe load order
    softdep_post: list[str] = field(default_factory=list)
    drivers: list[DriverSpec] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    size: int = 16384
    address: int = 0
    base_refs: int = 0
    loaded: bool = False
    load_seq: int = 0


@dataclass
class Function:
    bdf: str
    vendor: int
    device: int
    pci_class: int
    subsystem_vendor: int
    subsystem_device: int
    revision: int
    numa_node: int
    header_type: int
    group: Optional[int]
    path: str  # sys-relative real path: devices/pci0000:00/0000:00:07.0/0000:03:00.0
    parent: Optional[str]
    driver: Optional[str] = None
    override: Optional[str] = None
    sriov_totalvfs: Optional[int] = None
    sriov_vf_device: int = 0
    sriov_offset: int = 1
    sriov_stride: int = 1
    sriov_autoprobe: bool = True
    vfs: list[str] = field(default_factory=list)
    physfn: Optional[str] = None
    vfio_index: Optional[int] = None
    pm: bool = True  # has a PM capability: vfio-pci puts it in D3hot while idle
    power_state: str = "D0"
    driver_children: dict[str, list[str]] = field(default_factory=dict)
    waiting_for_supplier: bool = False
    noiommu_group: bool = False  # its group was made by vfio's no-IOMMU mode

    @property
    def depth(self) -> int:
        """How many ``..`` lead from this function's directory to sys_root."""
        return self.path.count("/") + 1

    @property
    def modalias(self) -> str:
        return modalias(
            self.vendor, self.device, self.subsystem_vendor, self.subsystem_device, self.pci_class
        )


# Entries a bound driver creates in its device's directory and takes away on unbind (seen in
# the q35 snapshots: e1000e's net/ptp/msi_irqs vanish when it is moved to vfio-pci).
DRIVER_CHILD_RE = re.compile(
    r"^(net|ptp|msi_irqs|virtio\d+|drm|graphics|sound|nvme|host\d+|ata\d+|hwmon|infiniband"
    r"|rbln\d+|[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]:pcie\d+)$"
)

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

VFIO_FAMILY: tuple[Module, ...] = (
    # Debian 6.1 (linux-image-amd64): names, paths, sizes and holders as in q35-vfio-loaded.json
    Module("vfio", "kernel/drivers/vfio/vfio.ko", size=49152, softdep_post=["vfio_iommu_type1"]),
    Module(
        "vfio_iommu_type1",
        "kernel/drivers/vfio/vfio_iommu_type1.ko",
        size=45056,
        deps=["vfio"],
        params={
            "allow_unsafe_interrupts": "N",
            "disable_hugepages": "N",
            "dma_entry_limit": "65535",
        },
    ),
    Module("vfio_virqfd", "kernel/drivers/vfio/vfio_virqfd.ko", size=16384),
    Module("irqbypass", "kernel/virt/lib/irqbypass.ko", size=16384),
    Module(
        "vfio_pci_core",
        "kernel/drivers/vfio/pci/vfio-pci-core.ko",
        size=73728,
        deps=["vfio", "vfio_virqfd", "irqbypass"],
    ),
    Module(
        "vfio_pci",
        "kernel/drivers/vfio/pci/vfio-pci.ko",
        size=16384,
        deps=["vfio_pci_core", "vfio"],
        drivers=[DriverSpec("vfio-pci", vfio=True, dma_safe=True)],
        params={
            "disable_denylist": "N",
            "disable_idle_d3": "N",
            "disable_vga": "N",
            "enable_sriov": "N",
            "nointxmask": "N",
        },
    ),
)

DEFAULT_KERNEL_CONFIG: dict[str, str] = {
    # what Debian 12's 6.1 kernel has; "n" is written as "# CONFIG_X is not set"
    "CONFIG_MODULES": "y",
    "CONFIG_IOMMU_SUPPORT": "y",
    "CONFIG_INTEL_IOMMU": "y",
    "CONFIG_INTEL_IOMMU_DEFAULT_ON": "n",
    "CONFIG_AMD_IOMMU": "y",
    "CONFIG_VFIO": "m",
    "CONFIG_VFIO_PCI": "m",
    "CONFIG_VFIO_PCI_CORE": "m",
    "CONFIG_VFIO_IOMMU_TYPE1": "m",
    "CONFIG_VFIO_NOIOMMU": "n",  # q35 snapshots: /sys/module/vfio has no parameters
    "CONFIG_IOMMUFD": "n",
}


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _const(text: Union[str, bytes]) -> Show:
    data = text.encode() if isinstance(text, str) else text

    def show() -> bytes:
        return data

    return show


def _line(text: str) -> bytes:
    return (text + "\n").encode()


def _device_name(data: bytes) -> str:
    """The name a bus store receives: C string (cut at NUL), one trailing newline ignored."""
    text = data.split(b"\0", 1)[0]
    if text.endswith(b"\n"):
        text = text[:-1]
    return text.decode("utf-8", "replace")


def _scan_hex(data: bytes, limit: int) -> list[int]:
    """sscanf("%x %x ...") on a sysfs buffer: the fields that parsed, in order."""
    values: list[int] = []
    for token in data.split(b"\0", 1)[0].decode("ascii", "replace").split()[:limit]:
        digits = token[2:] if token.lower().startswith("0x") else token
        match = re.match(r"[0-9a-fA-F]+", digits)
        if match is None:
            break
        values.append(int(match.group(0), 16) & 0xFFFFFFFF)
        if match.end() != len(digits):
            break
    return values


def _kstrtoul(data: bytes) -> int:
    """kstrtoul(buf, 0): one optional trailing newline, base from the prefix; EINVAL else."""
    text = data.split(b"\0", 1)[0].decode("ascii", "replace")
    if text.endswith("\n"):
        text = text[:-1]
    try:
        if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
            return int(text, 16)
        if re.fullmatch(r"0[0-7]+", text):
            return int(text, 8)
        if re.fullmatch(r"[0-9]+", text):
            return int(text, 10)
    except ValueError:
        pass
    raise _oserror(errno.EINVAL)


class FakeKernel:
    """The fake kernel. See the module docstring and tests/harness/README.md for the API."""

    def __init__(
        self,
        fs: FakeFilesystem,
        *,
        release: str = "6.1.0-test",
        iommu: bool = True,
        host_root: str = "/node",
        iommu_unit: str = "dmar0",
        cmdline: Optional[str] = None,
        modules_supported: bool = True,
        lib_modules: bool = True,
    ) -> None:
        if not host_root.startswith("/") or host_root.rstrip("/") == "":
            raise ValueError("host_root must be an absolute path other than /: never the real /sys")
        self.fs = fs
        self.release = release
        self.iommu = iommu
        self.iommu_unit = iommu_unit
        self.host_root = host_root.rstrip("/")
        self.sys_root = self.host_root + "/sys"
        self.dev_root = self.host_root + "/dev"
        self.proc_root = self.host_root + "/proc"
        self.writes: list[Write] = []
        self.dmesg: list[str] = []
        self.modprobe_calls: list[tuple[str, ...]] = []
        self.cpu_vendor = "AuthenticAMD" if iommu_unit.startswith("ivhd") else "GenuineIntel"
        self.kernel_config: dict[str, str] = dict(DEFAULT_KERNEL_CONFIG)
        self.drivers_autoprobe = True
        self.modules_supported = modules_supported
        self.noiommu = False
        self._lock = threading.RLock()
        self._dirs: dict[str, FakeDirectory] = {}
        self._functions: dict[str, Function] = {}
        self._drivers: dict[str, Driver] = {}  # registration order
        self._modules: dict[str, Module] = {}
        self._groups: dict[int, set[str]] = {}
        self._group_types: dict[int, str] = {}
        self._load_seq = 0
        self._next_address = 0xFFFFFFFFC0800000
        self._failures: defaultdict[str, deque[int]] = defaultdict(deque)
        self._unplug_on_write: defaultdict[str, list[str]] = defaultdict(list)
        self._gates: dict[str, UnbindGate] = {}
        self._all_gates: list[UnbindGate] = []
        self._probe_failures: dict[tuple[str, str], int] = {}
        self._defer_nodes = False
        self._pending_nodes: set[int] = set()
        self._cmdline = cmdline if cmdline is not None else self._default_cmdline()
        self._layout(lib_modules)

    # ------------------------------------------------------------------ paths and fs helpers
    def sys_path(self, rel: str) -> str:
        return posixpath.join(self.sys_root, rel)

    def _host_path(self, rel: str) -> str:
        return posixpath.join(self.host_root, rel)

    def _dir(self, path: str) -> FakeDirectory:
        """The folder at ``path`` (created with its parents if needed), cached.

        Building a machine adds thousands of entries; resolving each path from the root
        through pyfakefs was most of the cost, so folders are looked up once.
        """
        found = self._dirs.get(path)
        if found is not None:
            parent = found.parent_dir() if found.parent_dir is not None else None
            if parent is not None and parent.entries.get(posixpath.basename(path)) is not found:
                found = None  # removed behind the harness' back (os.rmdir on the fake)
        if found is None:
            obj = self.fs.resolve(path) if self.fs.exists(path) else self.fs.create_dir(path)
            if not isinstance(obj, FakeDirectory):
                raise NotADirectoryError(path)
            self._dirs[path] = found = obj
        return found

    def _mkdir(self, path: str) -> None:
        self._dir(path)

    def _put(self, path: str, obj: FakeFile) -> None:
        folder, name = posixpath.split(path)
        parent = self._dir(folder)
        if name in parent.entries:
            self._remove(path)
        parent.add_entry(obj)

    def _file(self, path: str, show: Optional[Show], store: Optional[Store] = None) -> None:
        name = posixpath.basename(path)
        self._put(path, KernelFile(name, self.fs, show=show, store=store))

    def _link(self, path: str, target: str) -> None:
        # what FakeFilesystem.create_symlink builds, without resolving the path again
        name = posixpath.basename(path)
        self._put(
            path, FakeFile(name, st_mode=stat.S_IFLNK | 0o777, contents=target, filesystem=self.fs)
        )

    def _remove(self, path: str) -> None:
        folder, name = posixpath.split(path)
        parent = self._dirs.get(folder)
        if parent is None:
            if not self.fs.exists(folder):
                return
            parent = self._dir(folder)
        if name in parent.entries:
            parent.remove_entry(name)
        prefix = path + "/"
        for cached in [p for p in self._dirs if p == path or p.startswith(prefix)]:
            del self._dirs[cached]

    def _chardev(self, path: str) -> None:
        folder, name = posixpath.split(path)
        parent = self._dir(folder)
        if name not in parent.entries:
            parent.add_entry(
                FakeFile(name, st_mode=stat.S_IFCHR | 0o600, contents="", filesystem=self.fs)
            )

    def _store(self, rel: str, effect: Callable[[bytes], None]) -> Store:
        def store(data: bytes) -> None:
            self._on_write(rel, data, effect)

        return store

    # ------------------------------------------------------------------ base layout
    def _default_cmdline(self) -> str:
        args = f"BOOT_IMAGE=/boot/vmlinuz-{self.release} root=/dev/sda1 ro quiet"
        if self.iommu:
            args += " intel_iommu=on iommu=pt" if not self.iommu_unit.startswith("ivhd") else ""
        return args

    def _layout(self, lib_modules: bool) -> None:
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
            self._mkdir(self.sys_path(rel))
        self._file(
            self.sys_path(f"{pci}/drivers_probe"),
            None,
            self._store(f"{pci}/drivers_probe", self._drivers_probe_store),
        )
        self._file(
            self.sys_path(f"{pci}/drivers_autoprobe"),
            lambda: _line("1" if self.drivers_autoprobe else "0"),
            self._store(f"{pci}/drivers_autoprobe", self._autoprobe_store),
        )
        self._file(self.sys_path(f"{pci}/rescan"), None, self._store(f"{pci}/rescan", self._accept))
        self._file(
            self.sys_path(f"{pci}/resource_alignment"),
            _const("\n"),
            self._store(f"{pci}/resource_alignment", self._accept),
        )
        self._file(self.sys_path(f"{pci}/uevent"), None, self._store(f"{pci}/uevent", self._accept))
        if self.iommu:
            unit_dir = f"devices/virtual/iommu/{self.iommu_unit}"
            self._mkdir(self.sys_path(unit_dir))
            self._link(self.sys_path(f"class/iommu/{self.iommu_unit}"), f"../../{unit_dir}")
            table = "IVRS" if self.iommu_unit.startswith("ivhd") else "DMAR"
            self._file(self.sys_path(f"firmware/acpi/tables/{table}"), _const(table.encode()))
        self._mkdir(self.dev_root)
        proc = self.proc_root
        self._file(f"{proc}/cmdline", lambda: _line(self._cmdline.rstrip("\n")))
        if self.modules_supported:
            self._file(posixpath.join(self.proc_root, "modules"), self._render_proc_modules)
        self._file(f"{proc}/sys/kernel/osrelease", lambda: _line(self.release))
        self._file(posixpath.join(self.proc_root, "cpuinfo"), self._render_cpuinfo)
        self._file(self._host_path(f"boot/config-{self.release}"), self._render_config)
        self._mkdir(self._host_path("etc/modprobe.d"))
        self._file(
            self._host_path("sbin/modprobe"), _const("#!/bin/sh\n# fake: FakeKernel.run_modprobe\n")
        )
        if lib_modules:
            base = f"lib/modules/{self.release}"
            self._file(self._host_path(f"{base}/modules.alias"), lambda: self._render_alias(False))
            self._file(
                self._host_path(f"{base}/modules.builtin.alias"), lambda: self._render_alias(True)
            )
            self._file(self._host_path(f"{base}/modules.builtin"), self._render_builtin)
            self._file(self._host_path(f"{base}/modules.dep"), self._render_dep)

    # ------------------------------------------------------------------ rendering
    def _render_cpuinfo(self) -> bytes:
        text = f"processor\t: 0\nvendor_id\t: {self.cpu_vendor}\nmodel name\t: Fake CPU\n\n"
        return text.encode()

    def _render_config(self) -> bytes:
        lines = [f"# Linux/x86 {self.release} Kernel Configuration (fake)"]
        for key, value in self.kernel_config.items():
            lines.append(f"# {key} is not set" if value == "n" else f"{key}={value}")
        return ("\n".join(lines) + "\n").encode()

    def _loaded_newest_first(self) -> list[Module]:
        loaded = [m for m in self._modules.values() if m.loaded and not m.builtin]
        return sorted(loaded, key=lambda m: -m.load_seq)

    def _holders(self, name: str) -> list[str]:
        return [m.name for m in self._loaded_newest_first() if name in m.deps]

    def _render_proc_modules(self) -> bytes:
        lines = []
        for mod in self._loaded_newest_first():
            holders = self._holders(mod.name)
            used = ",".join(holders) + "," if holders else "-"
            refs = mod.base_refs + len(holders)
            lines.append(f"{mod.name} {mod.size} {refs} {used} Live 0x{mod.address:016x}")
        return ("\n".join(lines) + "\n").encode() if lines else b""

    def _alias_lines(self, mod: Module) -> list[str]:
        lines = []
        for spec in mod.drivers:
            prefix = "vfio_pci" if spec.vfio else "pci"
            for vendor, device in spec.ids:
                lines.append(alias_pattern(prefix, vendor=vendor, device=device))
            for cls, mask in spec.classes:
                lines.append(alias_pattern(prefix, pci_class=cls, class_mask=mask))
            if spec.vfio and not spec.ids and not spec.classes:
                lines.append(alias_pattern(prefix))  # vfio_pci: matches any device
        return [f"alias {pattern} {mod.name}" for pattern in lines]

    def _render_alias(self, builtin: bool) -> bytes:
        lines = ["# Aliases extracted from modules themselves."] if not builtin else []
        for mod in sorted(self._modules.values(), key=lambda m: m.name):
            if mod.builtin == builtin:
                lines.extend(self._alias_lines(mod))
        return ("\n".join(lines) + "\n").encode()

    def _render_builtin(self) -> bytes:
        paths = sorted(m.path for m in self._modules.values() if m.builtin)
        return "".join(p + "\n" for p in paths).encode()

    def _closure(self, name: str) -> list[str]:
        """Transitive dependencies in modprobe order (modules.dep lists them this way)."""
        out: list[str] = []

        def visit(current: str) -> None:
            mod = self._modules.get(current)
            for dep in mod.deps if mod else []:
                if dep not in out:
                    out.append(dep)
                    visit(dep)

        visit(name)
        return out

    def _render_dep(self) -> bytes:
        lines = []
        for mod in sorted(self._modules.values(), key=lambda m: m.path):
            if mod.builtin:
                continue
            deps = [self._modules[d].path for d in self._closure(mod.name) if d in self._modules]
            lines.append(f"{mod.path}: {' '.join(deps)}".rstrip())
        return ("\n".join(lines) + "\n").encode()

    # ------------------------------------------------------------------ modules
    def declare_module(
        self,
        name: str,
        *,
        driver: Optional[str] = None,
        ids: Iterable[tuple[int, int]] = (),
        classes: Iterable[tuple[int, int]] = (),
        vfio: bool = False,
        dma_safe: bool = False,
        deps: Sequence[str] = (),
        softdep_post: Sequence[str] = (),
        params: Optional[dict[str, str]] = None,
        path: Optional[str] = None,
        builtin: bool = False,
        size: int = 16384,
    ) -> None:
        """A module that exists on disk (modules.dep, modules.alias) but is not loaded yet.

        ``driver`` is the PCI driver it registers on :meth:`load_module`. A built-in module is
        listed in modules.builtin and counts as loaded (its driver is registered at once).
        """
        mod_name = normalize_module(name)
        with self._lock:
            if mod_name in self._modules:
                raise ValueError(f"module {mod_name} already declared")
            specs = []
            if driver is not None:
                specs.append(DriverSpec(driver, tuple(ids), tuple(classes), vfio, dma_safe))
            self._modules[mod_name] = Module(
                mod_name,
                path or f"kernel/drivers/misc/{mod_name}.ko",
                builtin=builtin,
                deps=[normalize_module(d) for d in deps],
                softdep_post=[normalize_module(d) for d in softdep_post],
                drivers=specs,
                params=dict(params or {}),
                size=size,
            )
            if builtin:
                self._module_loaded(self._modules[mod_name])

    def add_vfio_modules(self, *, loaded: bool = True) -> None:
        """Declare the vfio stack of a Debian 6.1 kernel (vfio-pci and what it needs).

        ``loaded=True`` also loads it, as ``modprobe vfio-pci`` would: /dev/vfio/vfio appears
        and the vfio-pci driver is registered.
        """
        with self._lock:
            for template in VFIO_FAMILY:
                if template.name not in self._modules:
                    self._modules[template.name] = Module(
                        template.name,
                        template.path,
                        deps=list(template.deps),
                        softdep_post=list(template.softdep_post),
                        drivers=list(template.drivers),
                        params=dict(template.params),
                        size=template.size,
                    )
            if loaded:
                self.load_module("vfio_pci")

    def load_module(self, name: str) -> None:
        """What ``modprobe NAME`` does: dependencies first, then the module, then softdeps.

        Loading registers the module's PCI drivers (which, with drivers_autoprobe on, probe the
        unbound devices they match: an override naming vfio-pci binds on ``modprobe
        vfio-pci``), creates /sys/module/NAME and its /proc/modules line, and for ``vfio``
        /dev/vfio/vfio.
        """
        mod_name = normalize_module(name)
        with self._lock:
            mod = self._modules.get(mod_name)
            if mod is None:
                raise UnknownModuleError(
                    f"modprobe: FATAL: Module {mod_name} not found in directory "
                    f"/lib/modules/{self.release}"
                )
            if mod.loaded:
                return
            if not self.modules_supported and not mod.builtin:
                raise UnknownModuleError(f"{mod_name}: this kernel does not support modules")
            for dep in mod.deps:
                self.load_module(dep)
            self._module_loaded(mod)
            for post in mod.softdep_post:
                if post in self._modules:
                    self.load_module(post)

    def _module_loaded(self, mod: Module) -> None:
        self._load_seq += 1
        mod.loaded = True
        mod.load_seq = self._load_seq
        if not mod.address:
            self._next_address -= 0x10000
            mod.address = self._next_address
        self._module_sysfs(mod)
        if mod.name == "vfio":
            self._chardev(posixpath.join(self.dev_root, "vfio/vfio"))
        for spec in mod.drivers:
            if spec.name not in self._drivers:
                drv = Driver(
                    spec.name,
                    mod.name,
                    list(spec.ids),
                    list(spec.classes),
                    spec.vfio,
                    spec.dma_safe or spec.vfio,
                )
                self._register_driver(drv)
                if self.drivers_autoprobe:
                    self._driver_attach(drv)

    def _module_sysfs(self, mod: Module) -> None:
        base = self.sys_path(f"module/{mod.name}")
        if mod.builtin and not mod.params and not mod.drivers:
            return  # a built-in without parameters or drivers has no /sys/module entry
        self._mkdir(base)
        if not mod.builtin:
            self._file(f"{base}/initstate", _const("live\n"))
            self._file(
                f"{base}/refcnt", lambda: _line(str(mod.base_refs + len(self._holders(mod.name))))
            )
            self._mkdir(f"{base}/holders")
        for param, value in mod.params.items():
            self._file(f"{base}/parameters/{param}", _const(value + "\n"))

    def unload_module(self, name: str) -> None:
        """``rmmod``: unbinds the devices of its drivers, unregisters them, removes its files."""
        mod_name = normalize_module(name)
        with self._lock:
            mod = self._modules.get(mod_name)
            if mod is None or not mod.loaded or mod.builtin:
                raise UnknownModuleError(f"rmmod: ERROR: Module {mod_name} is not currently loaded")
            holders = self._holders(mod_name)
            if holders:
                raise ModuleInUseError(
                    f"rmmod: ERROR: Module {mod_name} is in use by: {' '.join(holders)}"
                )
            for drv in [d for d in self._drivers.values() if d.module == mod_name]:
                self._unregister_driver(drv.name)
            mod.loaded = False
            self._remove(self.sys_path(f"module/{mod_name}"))
            if mod_name == "vfio":
                self._remove(posixpath.join(self.dev_root, "vfio/vfio"))

    def run_modprobe(self, argv: Sequence[str]) -> tuple[int, str, str]:
        """A modprobe runner for product tests: ``(returncode, stdout, stderr)``.

        Accepts ``[modprobe, NAME]``, ``[chroot, ROOT, modprobe, NAME]`` and ``-r NAME``;
        every call is recorded in ``modprobe_calls``.
        """
        args = list(argv)
        self.modprobe_calls.append(tuple(args))
        if args and posixpath.basename(args[0]) == "chroot":
            args = args[2:]
        if not args or posixpath.basename(args[0]) != "modprobe":
            return 127, "", f"{args[0] if args else ''}: command not found"
        names = [a for a in args[1:] if not a.startswith("-")]
        remove = "-r" in args[1:] or "--remove" in args[1:]
        try:
            for module in names:
                if remove:
                    self.unload_module(module)
                else:
                    self.load_module(module)
        except (UnknownModuleError, ModuleInUseError) as exc:
            return 1, "", str(exc) + "\n"
        return 0, "", ""

    # ------------------------------------------------------------------ drivers
    def add_driver(
        self,
        name: str,
        *,
        module: Optional[str] = None,
        ids: Iterable[tuple[int, int]] = (),
        classes: Iterable[tuple[int, int]] = (),
        vfio: bool = False,
        dma_safe: bool = False,
        builtin: bool = False,
    ) -> None:
        """Register a PCI driver now (a loaded module's, or a built-in one).

        Setup, not an event: it does not probe devices that already exist (use
        :meth:`declare_module` + :meth:`load_module` for a module that arrives at run time).
        """
        with self._lock:
            if name in self._drivers:
                raise ValueError(f"driver {name} already registered")
            mod_name = normalize_module(module) if module is not None else None
            spec = DriverSpec(name, tuple(ids), tuple(classes), vfio, dma_safe)
            if vfio and mod_name is not None and not builtin:
                self.add_vfio_modules(loaded=False)  # a vfio driver's module needs the vfio stack
            if mod_name is not None:
                mod = self._modules.get(mod_name)
                if mod is None:
                    deps = ["vfio_pci_core", "vfio"] if vfio and not builtin else []
                    mod = Module(
                        mod_name, f"kernel/drivers/misc/{mod_name}.ko", builtin=builtin, deps=deps
                    )
                    self._modules[mod_name] = mod
                mod.drivers = [s for s in mod.drivers if s.name != name] + [spec]
                if not mod.loaded:
                    for dep in mod.deps:
                        self.load_module(dep)
                    self._module_loaded_without_probe(mod)
            # vfio drivers leave DMA to their user (driver_managed_dma) by nature
            drv = Driver(name, mod_name, list(spec.ids), list(spec.classes), vfio, dma_safe or vfio)
            self._register_driver(drv)
            if vfio:
                self._chardev(posixpath.join(self.dev_root, "vfio/vfio"))

    def _module_loaded_without_probe(self, mod: Module) -> None:
        specs, mod.drivers = mod.drivers, []
        self._module_loaded(mod)
        mod.drivers = specs

    def _register_driver(self, drv: Driver) -> None:
        self._drivers[drv.name] = drv
        base = f"bus/pci/drivers/{drv.name}"
        self._mkdir(self.sys_path(base))
        stores: dict[str, Callable[[str, bytes], None]] = {
            "bind": self._bind_store,
            "unbind": self._unbind_store,
            "new_id": self._new_id_store,
            "remove_id": self._remove_id_store,
            "uevent": lambda _name, _data: None,
        }
        for attr, effect in stores.items():
            self._file(
                self.sys_path(f"{base}/{attr}"),
                None,
                self._store(f"{base}/{attr}", self._for_driver(drv.name, effect)),
            )
        if drv.module is not None:
            self._link(self.sys_path(f"{base}/module"), f"../../../../module/{drv.module}")
            self._link(
                self.sys_path(f"module/{drv.module}/drivers/pci:{drv.name}"),
                f"../../../bus/pci/drivers/{drv.name}",
            )

    @staticmethod
    def _for_driver(name: str, effect: Callable[[str, bytes], None]) -> Callable[[bytes], None]:
        def bound(data: bytes) -> None:
            effect(name, data)

        return bound

    def _unregister_driver(self, name: str) -> None:
        drv = self._drivers[name]
        for fn in [f for f in self._functions.values() if f.driver == name]:
            self._detach(fn)
        del self._drivers[name]
        self._remove(self.sys_path(f"bus/pci/drivers/{name}"))
        if drv.module is not None:
            self._remove(self.sys_path(f"module/{drv.module}/drivers/pci:{name}"))

    # ------------------------------------------------------------------ functions
    def add_function(
        self,
        bdf: str,
        *,
        vendor: int,
        device: int,
        pci_class: int,
        subsystem_vendor: int = 0,
        subsystem_device: int = 0,
        driver: Optional[str] = None,
        iommu_group: Optional[int] = None,
        parent: Optional[str] = None,
        numa_node: int = -1,
        revision: int = 0,
        sriov_totalvfs: Optional[int] = None,
        boot_vga: Optional[bool] = None,
        header_type: Optional[int] = None,
        driver_override: Optional[str] = None,
        sriov_vf_device: Optional[int] = None,
    ) -> None:
        """Add a PCI function (setup: bound to ``driver`` at once, no probe).

        ``iommu_group`` is ignored when the IOMMU is off (no groups exist then).
        ``sriov_vf_device`` defaults to ``device + 1`` (the Rebellions convention).
        """
        with self._lock:
            self._new_function(
                bdf,
                vendor=vendor,
                device=device,
                pci_class=pci_class,
                subsystem_vendor=subsystem_vendor,
                subsystem_device=subsystem_device,
                iommu_group=iommu_group,
                parent=parent,
                numa_node=numa_node,
                revision=revision,
                sriov_totalvfs=sriov_totalvfs,
                boot_vga=boot_vga,
                header_type=header_type,
                driver_override=driver_override,
                sriov_vf_device=sriov_vf_device,
            )
            if driver is not None:
                self._setup_bind(self._functions[bdf], driver)

    def _new_function(
        self,
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
        domain, bus, _devfn = parse_bdf(bdf)
        if bdf in self._functions:
            raise ValueError(f"{bdf} already exists")
        if path is None:
            if parent is not None:
                if parent not in self._functions:
                    raise ValueError(f"parent {parent} of {bdf} does not exist")
                path = f"{self._functions[parent].path}/{bdf}"
            else:
                path = f"devices/pci{domain:04x}:{bus:02x}/{bdf}"
        self._mkdir(self.sys_path(posixpath.dirname(path)))
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
            group=iommu_group if self.iommu else None,
            path=path,
            parent=parent,
            override=driver_override,
            sriov_totalvfs=sriov_totalvfs,
            sriov_vf_device=sriov_vf_device if sriov_vf_device is not None else device + 1,
            physfn=physfn,
        )
        self._functions[bdf] = fn
        self._create_function_files(
            fn, attrs=attrs, entries=entries, links=links, boot_vga=boot_vga
        )
        self._link(self.sys_path(f"bus/pci/devices/{bdf}"), "../../../" + path)
        self._join_group(fn)
        return fn

    def _create_function_files(
        self,
        fn: Function,
        *,
        attrs: Optional[dict[str, str]],
        entries: Optional[set[str]],
        links: Optional[dict[str, str]],
        boot_vga: Optional[bool],
    ) -> None:
        """The function's folder: attributes, kernel files, links (and a snapshot's extras)."""
        d = self.sys_path(fn.path)
        self._mkdir(d)
        static = self._static_attrs(fn, attrs, snapshot=entries is not None, boot_vga=boot_vga)
        for name, value in static.items():
            self._file(f"{d}/{name}", _const(value + "\n"))
        self._kernel_files(fn, want=(lambda _n: True) if entries is None else entries.__contains__)
        if fn.sriov_totalvfs is not None:
            self._sriov_files(fn, static=entries is None)
        ups = "../" * fn.depth
        self._link(f"{d}/subsystem", ups + "bus/pci")
        if self.iommu and fn.group is not None:
            self._link(f"{d}/iommu", "../" * (fn.depth - 1) + f"virtual/iommu/{self.iommu_unit}")
        if fn.physfn is not None:
            self._link(f"{d}/physfn", f"../{fn.physfn}")
        modelled = _MODELLED_ENTRIES | set(static)
        for name, target in (links or {}).items():
            if name not in modelled and not name.startswith("virtfn"):
                self._link(f"{d}/{name}", target)
        if entries is not None:
            self._snapshot_extras(
                fn, entries - modelled - set(links or {}), bound=bool((links or {}).get("driver"))
            )

    @staticmethod
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

    def _kernel_files(self, fn: Function, *, want: Callable[[str], bool]) -> None:
        """The files whose content or write comes from the model."""
        d = self.sys_path(fn.path)
        rel = f"bus/pci/devices/{fn.bdf}"
        bdf = fn.bdf
        self._file(
            f"{d}/driver_override",
            lambda: _line(fn.override or "(null)"),
            self._store(f"{rel}/driver_override", lambda data: self._override_store(bdf, data)),
        )
        if want("enable"):
            self._file(f"{d}/enable", lambda: _line("1" if self._enabled(fn) else "0"))
        if want("power_state"):
            self._file(f"{d}/power_state", lambda: _line(fn.power_state))
        if want("uevent"):
            self._file(
                f"{d}/uevent", lambda: self._uevent(fn), self._store(f"{rel}/uevent", self._accept)
            )
        if want("config"):
            self._file(
                f"{d}/config",
                _const(
                    config_space(
                        vendor=fn.vendor,
                        device=fn.device,
                        revision=fn.revision,
                        pci_class=fn.pci_class,
                        header_type=fn.header_type,
                        subvendor=fn.subsystem_vendor,
                        subdevice=fn.subsystem_device,
                    )
                ),
            )
        if want("remove"):
            self._file(
                f"{d}/remove",
                None,
                self._store(f"{rel}/remove", lambda data: self._remove_store(bdf, data)),
            )
        if want("rescan"):
            self._file(f"{d}/rescan", None, self._store(f"{rel}/rescan", self._accept))
        if want("reset"):
            self._file(f"{d}/reset", None, self._store(f"{rel}/reset", self._reset_store))

    def _sriov_files(self, pf: Function, *, static: bool) -> None:
        d = self.sys_path(pf.path)
        rel = f"bus/pci/devices/{pf.bdf}"
        bdf = pf.bdf
        if static:
            for name, value in (
                ("sriov_totalvfs", str(pf.sriov_totalvfs)),
                ("sriov_offset", str(pf.sriov_offset)),
                ("sriov_stride", str(pf.sriov_stride)),
                ("sriov_vf_device", f"{pf.sriov_vf_device:x}"),
            ):
                self._file(f"{d}/{name}", _const(value + "\n"))
        self._file(
            f"{d}/sriov_numvfs",
            lambda: _line(str(len(pf.vfs))),
            self._store(f"{rel}/sriov_numvfs", lambda data: self._numvfs_store(bdf, data)),
        )
        self._file(
            f"{d}/sriov_drivers_autoprobe",
            lambda: _line("1" if pf.sriov_autoprobe else "0"),
            self._store(
                f"{rel}/sriov_drivers_autoprobe",
                lambda data: self._sriov_autoprobe_store(bdf, data),
            ),
        )

    def _snapshot_extras(self, fn: Function, names: set[str], *, bound: bool) -> None:
        """A recorded machine's entries the model does not know: empty files or folders."""
        d = self.sys_path(fn.path)
        fn.waiting_for_supplier = "waiting_for_supplier" in names
        if fn.waiting_for_supplier:
            self._file(f"{d}/waiting_for_supplier", _const("0\n"))
        for name in sorted(names - {"waiting_for_supplier"}):
            if name.startswith("virtfn") or _BDF_NAME_RE.match(name):
                continue  # VF links and child functions are created by the model
            if bound and DRIVER_CHILD_RE.match(name):
                continue  # created by _attach for the bound driver
            if _DIR_ENTRY_RE.match(name):
                self._mkdir(f"{d}/{name}")
            else:
                self._file(f"{d}/{name}", _const(b""))

    def _enabled(self, fn: Function) -> bool:
        # DOUBT: the kernel shows enable_cnt > 0; a native driver enables its device, vfio-pci
        # only while the device is open. Matches every function in the q35 snapshots.
        drv = self._drivers.get(fn.driver) if fn.driver else None
        return drv is not None and not drv.vfio

    def _uevent(self, fn: Function) -> bytes:
        lines = [f"DRIVER={fn.driver}"] if fn.driver else []
        lines += [
            f"PCI_CLASS={fn.pci_class:X}",
            f"PCI_ID={fn.vendor:04X}:{fn.device:04X}",
            f"PCI_SUBSYS_ID={fn.subsystem_vendor:04X}:{fn.subsystem_device:04X}",
            f"PCI_SLOT_NAME={fn.bdf}",
            f"MODALIAS={fn.modalias}",
        ]
        return ("\n".join(lines) + "\n").encode()

    def add_vfs(
        self,
        pf_bdf: str,
        count: int,
        *,
        device: Optional[int] = None,
        first_bdf: Optional[str] = None,
        driver: Optional[str] = None,
    ) -> list[str]:
        """Create ``count`` VFs of ``pf_bdf`` (setup): physfn/virtfnN links, sriov_numvfs.

        Each VF gets its own new IOMMU group. BDFs follow the PF's routing ID + offset (1) +
        stride (1) unless ``first_bdf`` is given. A PF added without ``sriov_totalvfs``
        becomes one with ``sriov_totalvfs=count``.
        """
        with self._lock:
            pf = self._functions[pf_bdf]
            if pf.sriov_totalvfs is None:
                self._make_pf(pf, count)
            if device is not None:
                pf.sriov_vf_device = device
            bdfs = self._create_vfs(pf, count, first_bdf)
            if driver is not None:
                for bdf in bdfs:
                    self._setup_bind(self._functions[bdf], driver)
            return bdfs

    def _make_pf(self, pf: Function, total: int) -> None:
        pf.sriov_totalvfs = total
        self._sriov_files(pf, static=True)

    def _create_vfs(self, pf: Function, count: int, first_bdf: Optional[str]) -> list[str]:
        if pf.vfs:
            raise ValueError(f"{pf.bdf} already has VFs")
        if pf.sriov_totalvfs is not None and count > pf.sriov_totalvfs:
            raise ValueError(f"{pf.bdf}: {count} VFs > sriov_totalvfs {pf.sriov_totalvfs}")
        domain, bus, devfn = parse_bdf(first_bdf if first_bdf else pf.bdf)
        rid = (bus << 8) | devfn
        start = rid if first_bdf else rid + pf.sriov_offset
        bdfs = []
        for index in range(count):
            vf_rid = start + index * (1 if first_bdf else pf.sriov_stride)
            bdf = format_bdf(domain, vf_rid >> 8, vf_rid & 0xFF)
            parent_dir = posixpath.dirname(pf.path)
            self._new_function(
                bdf,
                vendor=pf.vendor,
                device=pf.sriov_vf_device,
                pci_class=pf.pci_class,
                subsystem_vendor=pf.subsystem_vendor,
                subsystem_device=pf.subsystem_device,
                iommu_group=self._next_group(),
                parent=pf.parent,
                numa_node=pf.numa_node,
                revision=pf.revision,
                path=f"{parent_dir}/{bdf}",
                physfn=pf.bdf,
            )
            pf.vfs.append(bdf)
            self._link(self.sys_path(f"{pf.path}/virtfn{index}"), f"../{bdf}")
            bdfs.append(bdf)
        return bdfs

    def _next_group(self) -> int:
        """The lowest free group number (iommu_group_alloc uses an IDA): numbers get reused."""
        used = set(self._groups)
        used |= {f.group for f in self._functions.values() if f.group is not None}
        return next(n for n in range(len(used) + 1) if n not in used)

    def remove_function(self, bdf: str) -> None:
        """Hot-unplug: the function (its children and VFs first) disappears from sysfs."""
        with self._lock:
            fn = self._functions.get(bdf)
            if fn is None:
                return
            for child in [f.bdf for f in self._functions.values() if f.parent == bdf]:
                self.remove_function(child)
            for vf in list(fn.vfs):
                self.remove_function(vf)
            if fn.driver is not None:
                self._detach(fn)
            self._leave_group(fn)
            if fn.physfn is not None and fn.physfn in self._functions:
                pf = self._functions[fn.physfn]
                pf.vfs.remove(bdf)
                folder = self._dir(self.sys_path(pf.path))
                for name, entry in list(folder.entries.items()):
                    if name.startswith("virtfn") and entry.contents == f"../{bdf}":
                        self._remove(self.sys_path(f"{pf.path}/{name}"))
            self._remove(self.sys_path(f"bus/pci/devices/{bdf}"))
            self._remove(self.sys_path(fn.path))
            del self._functions[bdf]

    # ------------------------------------------------------------------ groups and /dev/vfio
    def _join_group(self, fn: Function) -> None:
        if fn.group is None or not (self.iommu or fn.noiommu_group):
            return
        group = fn.group
        base = self.sys_path(f"kernel/iommu_groups/{group}")
        if group not in self._groups:
            self._groups[group] = set()
            self._mkdir(f"{base}/devices")
            self._file(f"{base}/type", lambda: _line(self._group_types.get(group, "DMA-FQ")))
            self._file(f"{base}/reserved_regions", _const(b""))
        self._groups[group].add(fn.bdf)
        self._link(f"{base}/devices/{fn.bdf}", "../../../../" + fn.path)
        self._link(
            self.sys_path(f"{fn.path}/iommu_group"),
            "../" * fn.depth + f"kernel/iommu_groups/{group}",
        )

    def _leave_group(self, fn: Function) -> None:
        if fn.group is None or fn.group not in self._groups:
            return
        members = self._groups[fn.group]
        members.discard(fn.bdf)
        self._remove(self.sys_path(f"kernel/iommu_groups/{fn.group}/devices/{fn.bdf}"))
        if not members:
            del self._groups[fn.group]
            self._remove(self.sys_path(f"kernel/iommu_groups/{fn.group}"))

    def _group_on_vfio(self, group: int) -> bool:
        for bdf in self._groups.get(group, ()):
            drv = self._drivers.get(self._functions[bdf].driver or "")
            if drv is not None and drv.vfio:
                return True
        return False

    def _node_name(self, group: int) -> str:
        members = [self._functions[b] for b in self._groups.get(group, ())]
        return f"noiommu-{group}" if any(m.noiommu_group for m in members) else str(group)

    def _group_node_add(self, group: int) -> None:
        if self._defer_nodes:
            self._pending_nodes.add(group)
            return
        self._chardev(posixpath.join(self.dev_root, f"vfio/{self._node_name(group)}"))

    def _group_node_remove(self, group: int, name: Optional[str] = None) -> None:
        self._pending_nodes.discard(group)
        self._remove(posixpath.join(self.dev_root, f"vfio/{name or self._node_name(group)}"))

    def defer_vfio_nodes(self, defer: bool = True) -> None:
        """Model udev/devtmpfs lag: new /dev/vfio/N nodes appear only at :meth:`settle`."""
        with self._lock:
            self._defer_nodes = defer
            if not defer:
                self.settle()

    def settle(self) -> None:
        """Create the /dev/vfio/N nodes held back by :meth:`defer_vfio_nodes` (udevadm settle)."""
        with self._lock:
            for group in sorted(self._pending_nodes):
                if self._group_on_vfio(group):
                    self._chardev(posixpath.join(self.dev_root, f"vfio/{self._node_name(group)}"))
            self._pending_nodes.clear()

    # ------------------------------------------------------------------ matching, probe, bind
    def _static_match(self, drv: Driver, fn: Function) -> Optional[str]:
        if (fn.vendor, fn.device) in drv.ids:
            return "id"
        for cls, mask in drv.classes:
            if not (cls ^ fn.pci_class) & mask:
                return "class"
        return None

    def _match(self, drv: Driver, fn: Function) -> Optional[str]:
        """pci_match_device: ``None``, or how it matched (``id``, ``class``, ``override``)."""
        if fn.override is not None and fn.override != drv.name:
            return None  # rule 1
        if any(dyn.matches(fn) for dyn in drv.dyn_ids):
            return "id"  # new_id entries match even on vfio-pci (the old new_id method)
        kind = self._static_match(drv, fn)
        if kind is not None and (not drv.vfio or fn.override is not None):
            return kind  # vfio tables are override_only (rule 3)
        if fn.override is not None:
            return "override"  # rule 2: the named driver matches any device
        return None

    def _probe_error(self, drv: Driver, fn: Function) -> Optional[int]:
        forced = self._probe_failures.get((drv.name, fn.bdf))
        if forced is not None:
            return forced
        if drv.vfio:
            if (not self.iommu or fn.group is None) and not self.noiommu:
                return errno.EINVAL  # no IOMMU group: vfio_pci_core_register_device fails
            if fn.header_type != 0:
                return errno.EINVAL  # bridges: vfio_pci_probe refuses non-normal headers
            if fn.vfs:
                return errno.EBUSY  # PF with VFs enabled
        return None

    def _try_probe(self, drv: Driver, fn: Function) -> Optional[int]:
        err = self._probe_error(drv, fn)
        if err is not None:
            self.dmesg.append(
                f"{drv.name} {fn.bdf}: probe with driver {drv.name} failed with error -{err}"
            )
            return err
        self._attach(fn, drv)
        return None

    def _attach_best(self, fn: Function) -> None:
        """device_attach: the first driver that matches and whose probe succeeds.

        DOUBT: the kernel walks drivers in registration order and relies on probe() refusing
        what a class match caught by mistake (pcieport refuses non-port bridges). The fake
        tries ID matches (and the override) before class matches instead.
        """
        if fn.driver is not None:
            return
        by_id, by_class = [], []
        for drv in self._drivers.values():
            kind = self._match(drv, fn)
            if kind == "class":
                by_class.append(drv)
            elif kind is not None:
                by_id.append(drv)
        for drv in by_id + by_class:
            if self._try_probe(drv, fn) is None:
                return

    def _driver_attach(self, drv: Driver) -> None:
        """driver_attach: probe every unbound device that matches (module load, new_id)."""
        for fn in sorted(self._functions.values(), key=lambda f: f.bdf):
            if fn.driver is None and self._match(drv, fn) is not None:
                self._try_probe(drv, fn)

    def _setup_bind(self, fn: Function, name: str) -> None:
        drv = self._drivers.get(name)
        if drv is None:
            raise ValueError(f"driver {name} is not registered (add_driver first)")
        if drv.vfio and (not self.iommu or fn.group is None) and not self.noiommu:
            raise ValueError(f"{fn.bdf}: vfio driver {name} needs an IOMMU group")
        if fn.driver is not None:
            raise ValueError(f"{fn.bdf} is already bound to {fn.driver}")
        self._attach(fn, drv)

    def _attach(self, fn: Function, drv: Driver) -> None:
        fn.driver = drv.name
        d = self.sys_path(fn.path)
        self._link(f"{d}/driver", "../" * fn.depth + f"bus/pci/drivers/{drv.name}")
        self._link(self.sys_path(f"bus/pci/drivers/{drv.name}/{fn.bdf}"), "../../../../" + fn.path)
        if fn.waiting_for_supplier:
            fn.waiting_for_supplier = False
            self._remove(f"{d}/waiting_for_supplier")
        if drv.vfio:
            if fn.group is None or not self.iommu:
                # vfio's no-IOMMU mode gives the device a group of its own
                fn.group, fn.noiommu_group = self._next_group(), True
                self._join_group(fn)
            used = {f.vfio_index for f in self._functions.values() if f.vfio_index is not None}
            index = next(i for i in range(len(used) + 1) if i not in used)
            fn.vfio_index = index
            self._file(f"{d}/vfio-dev/vfio{index}/dev", _const(f"{VFIO_GROUP_MAJOR}:{index}\n"))
            fn.power_state = "D3hot" if fn.pm else "D0"
            if fn.group is not None:
                self._group_node_add(fn.group)
        else:
            fn.power_state = "D0"
            for child in fn.driver_children.get(drv.name, []):
                self._mkdir(f"{d}/{child}")

    def _detach(self, fn: Function) -> None:
        name = fn.driver
        if name is None:
            return
        drv = self._drivers.get(name)
        d = self.sys_path(fn.path)
        self._remove(f"{d}/driver")
        self._remove(self.sys_path(f"bus/pci/drivers/{name}/{fn.bdf}"))
        fn.driver = None
        if drv is not None and drv.vfio:
            self._remove(f"{d}/vfio-dev")
            fn.vfio_index = None
            fn.power_state = "D0"
            if fn.group is not None and not self._group_on_vfio(fn.group):
                self._group_node_remove(fn.group, self._node_name(fn.group))
            if fn.noiommu_group:
                self._leave_group(fn)
                self._remove(f"{d}/iommu_group")
                fn.group, fn.noiommu_group = None, False
        else:
            for child in fn.driver_children.get(name, []):
                self._remove(f"{d}/{child}")

    # ------------------------------------------------------------------ write plumbing
    def _canonical(self, path: str) -> str:
        rel = path
        if rel.startswith(self.sys_root + "/"):
            rel = rel[len(self.sys_root) + 1 :]
        rel = rel.lstrip("/")
        if rel.startswith("devices/"):
            for fn in self._functions.values():
                if rel.startswith(fn.path + "/") and "/" not in rel[len(fn.path) + 1 :]:
                    return f"bus/pci/devices/{fn.bdf}/{rel[len(fn.path) + 1 :]}"
        return rel

    def _on_write(self, rel: str, data: bytes, effect: Callable[[bytes], None]) -> None:
        text = data.decode("utf-8", "surrogateescape")
        with self._lock:
            queue = self._failures.get(rel)
            injected = queue.popleft() if queue else None
        try:
            if injected is not None:
                raise _oserror(injected)
            effect(data)
        except OSError as exc:
            self.writes.append(Write(rel, text, exc.errno))
            raise
        else:
            self.writes.append(Write(rel, text, None))
        finally:
            with self._lock:
                unplug = self._unplug_on_write.pop(rel, [])
                for bdf in unplug:
                    self.remove_function(bdf)

    @staticmethod
    def _accept(_data: bytes) -> None:
        """Stores that succeed and change nothing the product can see (uevent, rescan)."""

    def _reset_store(self, data: bytes) -> None:
        if _kstrtoul(data) != 1:
            raise _oserror(errno.EINVAL)

    # ------------------------------------------------------------------ the kernel's stores
    def _override_store(self, bdf: str, data: bytes) -> None:
        """driver_set_override (drivers/base/driver.c, 6.x)."""
        if len(data) >= PAGE_SIZE - 1:
            raise _oserror(errno.EINVAL)  # "one character less" than a page: 4095 is too long
        text = data.split(b"\0", 1)[0]  # strlen(): Python's "\0" clears (kernels after 2022)
        text = text.split(b"\n", 1)[0]  # cut at the first newline; "\n" alone clears
        with self._lock:
            fn = self._functions.get(bdf)
            if fn is None:
                raise _oserror(errno.ENODEV)
            fn.override = text.decode("utf-8", "replace") if text else None

    def _bind_store(self, driver: str, data: bytes) -> None:
        """bind_store (drivers/base/bus.c) + device_driver_attach."""
        bdf = _device_name(data)
        with self._lock:
            drv = self._drivers.get(driver)
            fn = self._functions.get(bdf)
            if drv is None or fn is None or self._match(drv, fn) is None:
                raise _oserror(errno.ENODEV)
            if fn.driver is not None:
                raise _oserror(errno.EBUSY)  # checked after the match, as the kernel does
            err = self._try_probe(drv, fn)
            if err is not None:
                raise _oserror(err)

    def _unbind_store(self, driver: str, data: bytes) -> None:
        """unbind_store: ENODEV unless the device is bound to this very driver."""
        bdf = _device_name(data)
        with self._lock:
            fn = self._functions.get(bdf)
            if fn is None or fn.driver != driver:
                raise _oserror(errno.ENODEV)
            gate = self._gates.pop(bdf, None)
        if gate is not None:
            # __device_release_driver removes the sysfs links (driver_sysfs_remove) before it
            # calls remove(), so while remove() blocks the function already looks unbound,
            # though the driver still owns it (/dev/vfio/N, vfio-dev stay): seen in the QEMU
            # tier with a process holding the group (tests/e2e, docs/testing.md).
            with self._lock:
                self._remove(self.sys_path(f"{fn.path}/driver"))
                self._remove(self.sys_path(f"bus/pci/drivers/{driver}/{fn.bdf}"))
            # remove() runs in the writer's context: block here, outside the model lock
            gate.entered.set()
            gate.wait()
        with self._lock:
            fn = self._functions.get(bdf)
            if fn is not None and fn.driver == driver:
                self._detach(fn)

    def _drivers_probe_store(self, data: bytes) -> None:
        """drivers_probe_store: ENODEV for an unknown device, success for every known one."""
        bdf = _device_name(data)
        with self._lock:
            fn = self._functions.get(bdf)
            if fn is None:
                raise _oserror(errno.ENODEV)
            self._attach_best(fn)

    def _autoprobe_store(self, data: bytes) -> None:
        with self._lock:
            self.drivers_autoprobe = data[:1] != b"0"

    def _new_id_store(self, driver: str, data: bytes) -> None:
        """new_id_store (drivers/pci/pci-driver.c)."""
        fields = _scan_hex(data, 7)
        if len(fields) < 2:
            raise _oserror(errno.EINVAL)
        defaults = [PCI_ANY_ID, PCI_ANY_ID, 0, 0]  # subvendor, subdevice, class, class_mask
        values = (fields + defaults[len(fields) - 2 :])[:6]
        dyn = DynId(values[0], values[1], values[2], values[3], values[4], values[5])
        with self._lock:
            drv = self._drivers[driver]
            if len(fields) != 7:
                probe = Function(
                    bdf="ffff:ff:1f.7",
                    vendor=dyn.vendor,
                    device=dyn.device,
                    pci_class=dyn.pci_class,
                    subsystem_vendor=dyn.subvendor,
                    subsystem_device=dyn.subdevice,
                    revision=0,
                    numa_node=-1,
                    header_type=0,
                    group=None,
                    path="",
                    parent=None,
                )
                if self._match(drv, probe) is not None:
                    raise _oserror(errno.EEXIST)
            drv.dyn_ids.append(dyn)
            self._driver_attach(drv)

    def _remove_id_store(self, driver: str, data: bytes) -> None:
        fields = _scan_hex(data, 6)
        if len(fields) < 2:
            raise _oserror(errno.EINVAL)
        vendor, device = fields[0], fields[1]
        subvendor = fields[2] if len(fields) > 2 else PCI_ANY_ID
        subdevice = fields[3] if len(fields) > 3 else PCI_ANY_ID
        pci_class = fields[4] if len(fields) > 4 else 0
        class_mask = fields[5] if len(fields) > 5 else 0
        with self._lock:
            drv = self._drivers[driver]
            for dyn in drv.dyn_ids:
                if (
                    dyn.vendor == vendor
                    and dyn.device == device
                    and subvendor in (PCI_ANY_ID, dyn.subvendor)
                    and subdevice in (PCI_ANY_ID, dyn.subdevice)
                    and not ((dyn.pci_class ^ pci_class) & class_mask)
                ):
                    drv.dyn_ids.remove(dyn)
                    return
            raise _oserror(errno.ENODEV)

    def _numvfs_store(self, bdf: str, data: bytes) -> None:
        """sriov_numvfs_store (drivers/pci/iov.c)."""
        num = _kstrtoul(data)
        if num > 0xFFFF:
            raise _oserror(errno.ERANGE)
        with self._lock:
            pf = self._functions[bdf]
            if num > (pf.sriov_totalvfs or 0):
                raise _oserror(errno.ERANGE)
            if num == len(pf.vfs):
                return
            drv = self._drivers.get(pf.driver) if pf.driver else None
            if drv is None or not drv.sriov_configure:
                raise _oserror(errno.ENOENT)
            if num == 0:
                for vf in list(pf.vfs):
                    self.remove_function(vf)
                return
            if pf.vfs:
                raise _oserror(errno.EBUSY)
            for vf in self._create_vfs(pf, num, None):
                if self.drivers_autoprobe and pf.sriov_autoprobe:
                    self._attach_best(self._functions[vf])

    def _sriov_autoprobe_store(self, bdf: str, data: bytes) -> None:
        value = _kstrtoul(data)
        with self._lock:
            self._functions[bdf].sriov_autoprobe = bool(value)

    def _remove_store(self, bdf: str, data: bytes) -> None:
        if _kstrtoul(data):
            self.remove_function(bdf)

    # ------------------------------------------------------------------ test controls
    def fail_next_write(self, path: str, err: int) -> None:
        """The next write to ``path`` (relative to sys_root) fails with ``err``, no effect.

        Calls queue up: two calls fail the next two writes there.
        """
        with self._lock:
            self._failures[self._canonical(path)].append(err)

    def fail_probe(self, driver: str, bdf: str, err: Optional[int] = errno.EIO) -> None:
        """Make ``driver``'s probe of ``bdf`` fail with ``err`` until called with ``None``."""
        with self._lock:
            if err is None:
                self._probe_failures.pop((driver, bdf), None)
            else:
                self._probe_failures[(driver, bdf)] = err

    def block_unbind(self, bdf: str) -> UnbindGate:
        """The next (valid) unbind of ``bdf`` blocks in the writer's thread until released.

        Returns the release event; its ``entered`` event tells that the writer is blocked.
        ``close()`` (the fixtures call it) releases every gate, so no thread is left hanging.
        """
        gate = UnbindGate(bdf)
        with self._lock:
            self._gates[bdf] = gate
            self._all_gates.append(gate)
        return gate

    def remove_function_on_write(self, path: str, bdf: str) -> None:
        """After the next write to ``path`` has run (whatever its result), ``bdf`` is unplugged."""
        with self._lock:
            self._unplug_on_write[self._canonical(path)].append(bdf)

    def enable_noiommu(self, enabled: bool = True) -> None:
        """vfio's ``enable_unsafe_noiommu_mode=Y``: no isolation, for refusal tests.

        vfio drivers then bind functions that have no IOMMU group: each gets a group of its
        own (an iommu_group link and /sys/kernel/iommu_groups/N appear) and the node is
        /dev/vfio/noiommu-N. Needs the vfio module (declared or loaded) for the parameter.
        """
        with self._lock:
            self.noiommu = enabled
            self.kernel_config["CONFIG_VFIO_NOIOMMU"] = "y"
            vfio = self._modules.get("vfio")
            if vfio is not None:
                vfio.params["enable_unsafe_noiommu_mode"] = "Y" if enabled else "N"
                if vfio.loaded:
                    self._module_sysfs(vfio)

    def set_cmdline(self, text: str) -> None:
        self._cmdline = text

    def set_group_type(self, group: int, kind: str) -> None:
        """/sys/kernel/iommu_groups/N/type (``DMA``, ``DMA-FQ``, ``identity``, ...)."""
        self._group_types[group] = kind

    def clear_writes(self) -> None:
        self.writes.clear()

    def release_all(self) -> None:
        """Release every blocked unbind."""
        with self._lock:
            gates = list(self._all_gates)
        for gate in gates:
            gate.set()

    def close(self) -> None:
        self.release_all()

    # ------------------------------------------------------------------ observations
    def has_function(self, bdf: str) -> bool:
        return bdf in self._functions

    def functions(self) -> list[str]:
        return sorted(self._functions)

    def function(self, bdf: str) -> Function:
        """The model object (read it, do not change it)."""
        return self._functions[bdf]

    def driver(self, name: str) -> Driver:
        return self._drivers[name]

    def drivers(self) -> list[str]:
        return list(self._drivers)

    def group_of(self, bdf: str) -> Optional[int]:
        fn = self._functions.get(bdf)
        return fn.group if fn is not None else None

    def group_members(self, group: int) -> list[str]:
        return sorted(self._groups.get(group, ()))

    def loaded_modules(self) -> list[str]:
        return [m.name for m in self._loaded_newest_first()]

    def driver_of(self, bdf: str) -> Optional[str]:
        """The bound driver, read from the ``driver`` link; ``None`` if unbound or gone."""
        fn = self._functions.get(bdf)
        if fn is None:
            return None
        path = self.sys_path(f"{fn.path}/driver")
        if not self.fs.islink(path):
            return None
        return posixpath.basename(self.fs.readlink(path))

    def override_of(self, bdf: str) -> Optional[str]:
        """driver_override as the file shows it; ``None`` for ``(null)`` (or no such function)."""
        fn = self._functions.get(bdf)
        if fn is None:
            return None
        obj: Any = self.fs.get_object(self.sys_path(f"{fn.path}/driver_override"))
        shown = obj.peek().decode().rstrip("\n") if isinstance(obj, KernelFile) else "(null)"
        return None if shown == "(null)" else shown

    def vfio_nodes(self) -> set[str]:
        """Names under /node/dev/vfio (``{"vfio", "3"}``); empty when the folder is absent."""
        path = posixpath.join(self.dev_root, "vfio")
        if not self.fs.isdir(path):
            return set()
        return set(self.fs.listdir(path))

    def read(self, rel: str) -> str:
        """What a reader of sys_root/REL sees (for assertions)."""
        obj: Any = self.fs.get_object(self.sys_path(rel))
        if isinstance(obj, KernelFile):
            return obj.peek().decode("utf-8", "replace")
        return str(obj.contents)

    # ------------------------------------------------------------------ snapshots
    @classmethod
    def from_snapshot(
        cls,
        fs: FakeFilesystem,
        path_or_dict: Union[str, os.PathLike[str], dict[str, Any]],
        *,
        host_root: str = "/node",
    ) -> FakeKernel:
        """Build the fake from a /work/shared/snapshots JSON file (or its parsed dict)."""
        from tests.harness.snapshot import load_snapshot

        return load_snapshot(fs, path_or_dict, host_root=host_root)

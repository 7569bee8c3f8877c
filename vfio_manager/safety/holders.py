"""Who holds a function: processes with its device nodes or VFIO device open, or its BAR
files mapped.

One pass over /proc covers every function; a node is matched by path or, under another
container's name, by device number; a VFIO device fd by the device its fdinfo names (kernel-facts
K26); a process we may not inspect makes the scan incomplete.
"""

from __future__ import annotations

import errno as errno_mod
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional, Union

from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import is_vfio_driver
from vfio_manager.kernel.model import PciFunction
from vfio_manager.kernel.procfs import Procfs
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.log import get_logger

log = get_logger("vfio_manager.safety.holders")

_DELETED = " (deleted)"
_VFIO_DEVICE = "anon_inode:[vfio-device]"  # a VFIO device fd, in /proc/PID/fd and maps
_SYSPATH = "vfio-device-syspath:"  # its fdinfo line naming the device (Linux 6.18 and later)
_DEVICE_OF = "the VFIO device of "
UNNAMED_VFIO_DEVICE = "a VFIO device fd (its device unnamed before Linux 6.18)"
_VANISHED = frozenset({errno_mod.ENOENT, errno_mod.ESRCH})
_COMM_LIMIT = 64
_FDINFO_LIMIT = 4096


@dataclass(frozen=True)
class Target:
    """A file a process can hold: by ``path`` (or ``rdev``, a node), or mapped (a BAR)."""

    path: str
    rdev: Optional[int] = None
    mapped: bool = False

    @classmethod
    def node(cls, path: str, numbers: Optional[str] = None) -> Target:
        """A device node; ``numbers`` is sysfs's ``MAJ:MIN`` for it, if known."""
        major, _, minor = (numbers or "").partition(":")
        known = major.isdecimal() and minor.isdecimal()
        return cls(path, os.makedev(int(major), int(minor)) if known else None)

    @classmethod
    def resource(cls, path: str) -> Target:
        return cls(path, None, mapped=True)

    @classmethod
    def vfio_device(cls, bdf: str) -> Target:
        """The function's VFIO device, held through an fd its fdinfo names."""
        return cls(_DEVICE_OF + bdf)


@dataclass(frozen=True, order=True)
class Holder:
    """A process holding a target: ``what`` is the path it holds, ``via`` "fd" or "mmap"."""

    pid: int
    comm: str
    what: str
    via: str = "fd"

    def describe(self) -> str:
        verb, suffix = ("has", " open") if self.via == "fd" else ("maps", "")
        return f"PID {self.pid} ({self.comm}) {verb} {self.what}{suffix}"

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "command": self.comm, "holds": self.what, "via": self.via}


@dataclass(frozen=True)
class HolderScan:
    """Result of one scan: the holders, how many processes were looked at, and which not."""

    holders: tuple[Holder, ...]
    processes: int
    unreadable: tuple[int, ...]

    @property
    def complete(self) -> bool:
        return not self.unreadable


def describe_holders(holders: Iterable[Holder]) -> str:
    """One line for a refusal: ``PID 4242 (qemu-system-x86) has /dev/vfio/9 open; ...``."""
    return "; ".join(h.describe() for h in holders)


def function_targets(
    sysfs: Sysfs, address: PciAddress, *, group: Optional[int] = None
) -> list[Target]:
    """Everything through which a process can hold ``address`` (and ``/dev/vfio/<group>``),
    under the host's names and ours."""
    targets: dict[tuple[str, bool], Target] = {}

    def add(target: Target) -> None:
        targets.setdefault((target.path, target.mapped), target)

    nodes: list[tuple[str, Optional[str]]] = [*sysfs.char_devs_of(address)]
    if group is not None:
        nodes.insert(0, (f"vfio/{int(group)}", sysfs.vfio_group_dev_numbers(group)))
    for devname, numbers in nodes:
        add(Target.node(Sysfs.canonical_dev_path(devname), numbers))
        add(Target.node(sysfs.dev_path(devname), numbers))
    real_dir = sysfs.device_realpath(address)
    for path in sysfs.resource_files(address):
        real = os.path.join(real_dir, os.path.basename(path))
        for name in (path, real):
            add(Target.resource(name))
            add(Target.resource(sysfs.canonical_sys_path(name)))
    return list(targets.values())


def scan_holders(
    proc_root: str, targets: Iterable[Union[Target, str]], *, self_pid: Optional[int] = None
) -> HolderScan:
    """Scan every process but ``self_pid`` (ours) once for all ``targets`` (strings: paths)."""
    wanted = [_as_target(t) for t in targets]
    if not wanted:
        return HolderScan((), 0, ())
    return _Scanner(proc_root, wanted, os.getpid() if self_pid is None else self_pid).run()


def find_holders(
    sysfs: Sysfs, proc_root: str, functions: list[PciFunction]
) -> dict[PciAddress, list[Holder]]:
    """Holders per function, from one scan of /proc (the group node and VFIO device of one on
    vfio). A VFIO device fd that names no device holds each function a user has open: its
    ``enable`` count above 0 (vfio-pci enables the device at its first open) or unreadable."""
    owner: dict[str, PciAddress] = {}
    targets: list[Target] = []
    for function in functions:
        on_vfio = is_vfio_driver(function.driver)
        group = function.iommu_group if on_vfio else None
        device = [Target.vfio_device(function.bdf)] if on_vfio else []
        for target in [*function_targets(sysfs, function.address, group=group), *device]:
            owner.setdefault(target.path, function.address)
            targets.append(target)
    scan = scan_holders(proc_root, targets)
    if not scan.complete:
        log.warning(
            "in-use scan incomplete",
            step="in-use",
            outcome="partial",
            unreadable_pids=list(scan.unreadable)[:20],
            hint="run as root with the host's PID namespace (hostPID: true in Kubernetes)",
        )
    opened: list[PciAddress] = []
    if any(h.what == UNNAMED_VFIO_DEVICE for h in scan.holders):
        vfio = [f.address for f in functions if is_vfio_driver(f.driver)]
        opened = [a for a in vfio if sysfs.read_device_attr(a, "enable") != "0"]
    found: dict[PciAddress, list[Holder]] = {}
    for holder in scan.holders:  # what it holds is one of the targets, or an unnamed device
        held = opened if holder.what == UNNAMED_VFIO_DEVICE else [owner[holder.what]]
        for address in held:
            found.setdefault(address, []).append(holder)
    return found


def _as_target(target: Union[Target, str]) -> Target:
    if isinstance(target, Target):
        return target
    name = os.path.basename(target)
    index = name[len("resource") :].removesuffix("_wc") if name.startswith("resource") else ""
    return Target(target, mapped=index.isdecimal())


def _needle(path: str) -> bytes:
    """A part of ``path`` a maps file naming it contains: rules most out before parsing."""
    parts = path.rstrip("/").split("/")
    tail = parts[-1] if len(parts[-1]) >= 4 or len(parts) < 2 else "/".join(parts[-2:])
    return tail.encode("utf-8", "surrogateescape")


class _Scanner:
    """One pass over /proc: a ``readlink`` per descriptor, a ``stat`` only for a node."""

    def __init__(self, proc_root: str, targets: list[Target], self_pid: int) -> None:
        self.proc = Procfs(proc_root)
        self.self_pid = self_pid
        self.by_path = {t.path: t for t in targets}
        self.by_rdev = {t.rdev: t for t in targets if t.rdev is not None}
        self.basenames = frozenset(os.path.basename(t.path) for t in targets if t.rdev)
        self.vfio_devices = any(t.path.startswith(_DEVICE_OF) for t in targets)
        self.read_maps = self.vfio_devices or any(t.mapped for t in targets)
        device = b"[vfio-device]"  # a device target's needle: what its mapping shows
        needles = {device if p.startswith(_DEVICE_OF) else _needle(p) for p in self.by_path}
        self.map_needles = tuple(sorted(needles))

    def run(self) -> HolderScan:
        try:
            pids = [pid for pid in self.proc.pids() if pid != self.self_pid]
        except OSError as exc:
            log.warning("in-use scan: cannot list processes", proc=self.proc.root, error=exc)
            return HolderScan((), 0, ())
        holders: set[Holder] = set()
        unreadable: list[int] = []
        for pid in pids:
            hits, denied = self._process(pid)
            if denied:
                unreadable.append(pid)
            if hits:
                comm = self._comm(pid)
                holders.update(Holder(pid, comm, what, via) for what, via in hits)
        if unreadable:
            log.debug("in-use scan: processes not inspected", count=len(unreadable))
        return HolderScan(tuple(sorted(holders)), len(pids), tuple(sorted(unreadable)))

    def _process(self, pid: int) -> tuple[set[tuple[str, str]], bool]:
        """Hits ``(path, via)`` of one process, and whether some of it was not readable."""
        base = self.proc.pid_dir(pid)
        hits: set[tuple[str, str]] = set()
        denied = False
        try:
            fds = os.listdir(base + "/fd")
        except OSError as exc:
            if exc.errno in _VANISHED:
                return hits, False
            fds, denied = [], True
        prefix, readlink, by_path, by_rdev = base + "/fd/", os.readlink, self.by_path, self.by_rdev
        for fd in fds:
            try:
                link = readlink(prefix + fd).removesuffix(_DELETED)
            except OSError as exc:
                denied = denied or exc.errno not in _VANISHED
                continue
            target = by_path.get(link)
            if target is None and by_rdev and link.startswith("/"):
                target = self._by_device_number(prefix + fd, link)
            if target is not None:
                hits.add((target.path, "fd"))
            elif link == _VFIO_DEVICE and self.vfio_devices:
                device = self._device_named(f"{base}/fdinfo/{fd}")
                if device is not None:
                    hits.add((device, "fd"))
        if self.read_maps:
            try:
                with open(base + "/maps", "rb") as handle:
                    hits.update((path, "mmap") for path in self._mapped(handle.read()))
            except OSError as exc:
                denied = denied or exc.errno not in _VANISHED
        return hits, denied

    def _by_device_number(self, fd_path: str, link: str) -> Optional[Target]:
        if "/dev/" not in link and os.path.basename(link) not in self.basenames:
            return None
        try:
            st = os.stat(fd_path)
        except OSError:
            return None
        rdev = getattr(st, "st_rdev", None)  # absent on some emulated file systems
        if rdev is not None and (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            return self.by_rdev.get(rdev)
        return None

    def _device_named(self, fdinfo: str) -> Optional[str]:
        """The target a VFIO device fd's fdinfo names (``None``: not one of ours), or
        :data:`UNNAMED_VFIO_DEVICE`; the device is the last PCI address of its path."""
        try:
            with open(fdinfo, encoding="utf-8", errors="replace") as handle:
                lines = handle.read(_FDINFO_LIMIT).splitlines()
        except OSError:
            lines = []
        path = next((ln[len(_SYSPATH) :] for ln in lines if ln.startswith(_SYSPATH)), None)
        if path is None:
            return UNNAMED_VFIO_DEVICE
        found = (PciAddress.from_sysfs_name(p) for p in reversed(path.strip().split("/")))
        target = _DEVICE_OF + str(next((a for a in found if a is not None), "?"))
        return target if target in self.by_path else None

    def _mapped(self, data: bytes) -> set[str]:
        """Targets a maps file names (parsed only when it holds a target's needle)."""
        if not any(needle in data for needle in self.map_needles):
            return set()
        lines = (line.split(None, 5) for line in data.decode("utf-8", "replace").split("\n"))
        paths = {p[5].removesuffix(_DELETED) for p in lines if len(p) == 6}
        unnamed = {UNNAMED_VFIO_DEVICE} if self.vfio_devices and _VFIO_DEVICE in paths else set()
        return (paths & self.by_path.keys()) | unnamed

    def _comm(self, pid: int) -> str:
        try:
            with open(
                self.proc.pid_path(pid, "comm"), encoding="utf-8", errors="replace"
            ) as handle:
                return handle.read(_COMM_LIMIT).strip() or "?"
        except OSError:
            return "?"

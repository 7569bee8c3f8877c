"""The one module that builds paths under /sys and /dev, reads them and writes them.

Every other module asks :class:`Sysfs` for a value or a write; none builds a path. The roots
are injectable (``--sysfs-root``, ``--dev-root``) so tests run against a fake tree and a
container can point at the host's mounts.

Writes use ``os.open`` + a single ``os.write`` on an unbuffered descriptor: the kernel answers
each sysfs write with an errno, and a buffered ``open().write()`` would report it late (at
close) or not at all. Reads tolerate vanished files and garbage: they return ``None`` rather
than raise, because a function can disappear between two reads on a live host.
"""

from __future__ import annotations

import operator
import os
import threading
from collections.abc import Callable
from typing import Optional

from vfio_manager.errors import SysfsWriteError, UsageError
from vfio_manager.kernel.address import PciAddress

DEFAULT_SYSFS_ROOT = "/sys"
DEFAULT_DEV_ROOT = "/dev"
_READ_LIMIT = 4096  # sysfs attributes are at most a page
# sorts addresses by tuples compared in C, not by PciAddress.__lt__ called per comparison
_address_order = operator.attrgetter("domain", "bus", "device", "function")


def direct_write(path: str, payload: bytes) -> None:
    """One unbuffered write in this process; the kernel's errno comes back as OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.write(fd, payload)
    finally:
        os.close(fd)


def _is_number(name: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²', which int() then refuses."""
    return name.isascii() and name.isdigit()


def _valid_name(name: str, what: str) -> str:
    """Refuse a driver or module name that could climb out of its directory."""
    if not name or "/" in name or name in {".", ".."} or "\0" in name:
        raise UsageError(f"{name!r} is not a valid {what} name")
    return name


class Sysfs:
    """Typed access to the PCI, IOMMU and VFIO parts of sysfs and /dev.

    ``writes`` counts the writes made through this object, so callers (and tests) can prove
    that a converged node is left alone; :meth:`writes_to` counts them per function, which
    stays exact while functions move side by side on several threads. ``transport`` delivers
    the bytes: in this process by default, or through
    :class:`~vfio_manager.safety.writer.ChildWriter` for a real run.
    """

    def __init__(
        self,
        root: str = DEFAULT_SYSFS_ROOT,
        dev_root: str = DEFAULT_DEV_ROOT,
        *,
        transport: Callable[[str, bytes], None] = direct_write,
    ) -> None:
        self.root = root.rstrip("/") or "/"
        self.dev_root = dev_root.rstrip("/") or "/"
        self.transport = transport
        self.writes = 0
        self._writes_to: dict[str, int] = {}
        self._count_guard = threading.Lock()
        # Built once: a 4,096-function node asks for tens of thousands of paths below it.
        self._devices_prefix = os.path.join(self.root, "bus", "pci", "devices") + "/"
        self._devices_real: Optional[str] = None

    # -- paths ---------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def device_dir(self, address: PciAddress) -> str:
        return f"{self._devices_prefix}{address}"

    def device_attr_path(self, address: PciAddress, name: str) -> str:
        return os.path.join(self.device_dir(address), _valid_name(name, "attribute"))

    def driver_dir(self, driver: str) -> str:
        return self._path("bus", "pci", "drivers", _valid_name(driver, "driver"))

    def driver_file_path(self, driver: str, name: str) -> str:
        return os.path.join(self.driver_dir(driver), _valid_name(name, "driver file"))

    def bus_file_path(self, name: str) -> str:
        return self._path("bus", "pci", _valid_name(name, "bus file"))

    def iommu_groups_dir(self) -> str:
        return self._path("kernel", "iommu_groups")

    def vfio_dev_dir(self) -> str:
        return os.path.join(self.dev_root, "vfio")

    def vfio_group_node(self, group: int) -> str:
        return os.path.join(self.vfio_dev_dir(), str(group))

    def class_dir(self, name: str) -> str:
        return self._path("class", _valid_name(name, "class"))

    def module_dir(self, module: str) -> str:
        return self._path("module", _valid_name(module, "module"))

    def acpi_table_path(self, name: str) -> str:
        return self._path("firmware", "acpi", "tables", _valid_name(name, "ACPI table"))

    # -- primitive reads -------------------------------------------------------------------
    @staticmethod
    def read_text(path: str) -> Optional[str]:
        """Content of a small file without its trailing newline; ``None`` if unreadable."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            data = os.read(fd, _READ_LIMIT)
        except OSError:
            return None
        finally:
            os.close(fd)
        return data.decode("utf-8", "replace").rstrip("\n")

    @staticmethod
    def link_name(path: str) -> Optional[str]:
        """Last component of a symlink's target (``driver`` -> ``e1000e``); ``None`` if absent."""
        try:
            return os.path.basename(os.readlink(path).rstrip("/"))
        except OSError:
            return None

    @staticmethod
    def list_dir(path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    # -- PCI reads ---------------------------------------------------------------------------
    def list_functions(self) -> list[PciAddress]:
        """Every PCI function the kernel knows, in address order (one directory listing)."""
        found = (
            PciAddress.from_sysfs_name(n)
            for n in self.list_dir(self._path("bus", "pci", "devices"))
        )
        return sorted((a for a in found if a is not None), key=_address_order)

    def function_exists(self, address: PciAddress) -> bool:
        return os.path.isdir(self.device_dir(address))

    def read_device_attr(self, address: PciAddress, name: str) -> Optional[str]:
        return self.read_text(self.device_attr_path(address, name))

    def device_link(self, address: PciAddress, name: str) -> Optional[str]:
        return self.link_name(self.device_attr_path(address, name))

    def driver_of(self, address: PciAddress) -> Optional[str]:
        """The bound driver, from the ``driver`` link: the only truth about binding."""
        return self.device_link(address, "driver")

    def override_of(self, address: PciAddress) -> Optional[str]:
        """``driver_override``, ``None`` when the kernel shows ``(null)`` or the file is absent."""
        value = self.read_device_attr(address, "driver_override")
        return None if value in (None, "", "(null)") else value

    def iommu_group_of(self, address: PciAddress) -> Optional[int]:
        name = self.link_name(f"{self._devices_prefix}{address}/iommu_group")
        return int(name) if name is not None and _is_number(name) else None

    def iommu_groups(self) -> dict[int, list[PciAddress]]:
        """Every IOMMU group and its members, read once (no per-function scans)."""
        base = self.iommu_groups_dir()
        groups: dict[int, list[PciAddress]] = {}
        for name in self.list_dir(base):
            if not _is_number(name):
                continue
            members = (
                PciAddress.from_sysfs_name(m)
                for m in self.list_dir(os.path.join(base, name, "devices"))
            )
            groups[int(name)] = sorted((a for a in members if a is not None), key=_address_order)
        return groups

    # -- drivers -----------------------------------------------------------------------------
    def list_drivers(self) -> list[str]:
        return self.list_dir(self._path("bus", "pci", "drivers"))

    def driver_registered(self, driver: str) -> bool:
        return os.path.isdir(self.driver_dir(driver))

    def driver_module(self, driver: str) -> Optional[str]:
        """Module behind a PCI driver (``drivers/NAME/module`` link); ``None`` when built in."""
        return self.link_name(os.path.join(self.driver_dir(driver), "module"))

    # -- /dev/vfio ---------------------------------------------------------------------------
    def vfio_nodes(self) -> frozenset[str]:
        return frozenset(self.list_dir(self.vfio_dev_dir()))

    def vfio_node_exists(self, group: int) -> bool:
        return os.path.exists(self.vfio_group_node(group))

    # -- preflight reads (modules, IOMMU units, firmware tables) -----------------------------
    def iommu_group_names(self) -> list[str]:
        """Names under /sys/kernel/iommu_groups (one listing; empty when the IOMMU is off)."""
        return [n for n in self.list_dir(self.iommu_groups_dir()) if _is_number(n)]

    def iommu_units(self) -> list[str]:
        """Entries of /sys/class/iommu: ``dmar0`` (Intel VT-d), ``ivhd0`` (AMD-Vi), ..."""
        return self.list_dir(self.class_dir("iommu"))

    def acpi_tables_visible(self) -> bool:
        return os.path.isdir(self._path("firmware", "acpi", "tables"))

    def acpi_table_present(self, name: str) -> bool:
        return os.path.lexists(self.acpi_table_path(name))

    def module_present(self, module: str) -> bool:
        """/sys/module/NAME exists: loaded, or built in with parameters."""
        return os.path.isdir(self.module_dir(module))

    def module_initstate(self, module: str) -> Optional[str]:
        """``live`` for a loaded loadable module; ``None`` for a built-in one (or none at all)."""
        return self.read_text(os.path.join(self.module_dir(module), "initstate"))

    def module_parameter(self, module: str, name: str) -> Optional[str]:
        path = os.path.join(self.module_dir(module), "parameters", _valid_name(name, "parameter"))
        return self.read_text(path)

    def module_pci_drivers(self, module: str) -> list[str]:
        """PCI drivers a module registered (/sys/module/MOD/drivers/pci:NAME -> NAME)."""
        entries = self.list_dir(os.path.join(self.module_dir(module), "drivers"))
        return [e[len("pci:") :] for e in entries if e.startswith("pci:")]

    def dev_vfio_exists(self) -> bool:
        return os.path.isdir(self.vfio_dev_dir())

    def vfio_container_exists(self) -> bool:
        """/dev/vfio/vfio, the legacy container node QEMU opens (vfio, CONFIG_VFIO_CONTAINER)."""
        return os.path.exists(os.path.join(self.vfio_dev_dir(), "vfio"))

    def iommufd_node_exists(self) -> bool:
        """/dev/iommu, the iommufd node that replaces the container on new kernels."""
        return os.path.exists(os.path.join(self.dev_root, "iommu"))

    # -- writes -------------------------------------------------------------------------------
    def write(self, path: str, data: str, *, subject: Optional[str] = None) -> None:
        """One unbuffered write; the kernel's errno comes back as :class:`SysfsWriteError`.

        ``subject`` is the BDF of the function the write is about (counted by
        :meth:`writes_to`)."""
        with self._count_guard:
            self.writes += 1
            if subject is not None:
                self._writes_to[subject] = self._writes_to.get(subject, 0) + 1
        try:
            self.transport(path, data.encode())
        except OSError as exc:
            raise SysfsWriteError.from_os_error(exc, path=path, data=data) from exc

    def writes_to(self, bdf: str) -> int:
        """Writes made about one function: its own attributes, and the driver and bus files
        (bind, unbind, drivers_probe) written its BDF."""
        with self._count_guard:
            return self._writes_to.get(bdf, 0)

    def write_device_attr(self, address: PciAddress, name: str, data: str) -> None:
        self.write(self.device_attr_path(address, name), data, subject=str(address))

    def write_driver_file(self, driver: str, name: str, data: str) -> None:
        self.write(self.driver_file_path(driver, name), data, subject=data.strip() or None)

    def write_bus_file(self, name: str, data: str) -> None:
        self.write(self.bus_file_path(name), data, subject=data.strip() or None)

    # -- holders, disks, interfaces (read-only; used by inuse.py and guard.py) ---------------
    def device_realpath(self, address: PciAddress) -> str:
        """The function's resolved /sys/devices/... path.

        /proc/PID/maps and the /sys/class/{block,net} links name devices this way, not
        through /sys/bus/pci/devices, so matching against them needs this form.
        """
        link = self.device_dir(address)
        try:
            target = os.readlink(link)
        except OSError:  # not a link (a test tree), or gone: resolve it the long way
            return os.path.realpath(link)
        if not target.startswith("../"):
            return os.path.realpath(link)
        # The kernel's link is relative (../../../devices/pci0000:00/...) and every folder
        # it climbs into under /sys/devices is a device's own folder, never a link: so one
        # readlink and a resolved bus/pci/devices give what realpath's lstat per component
        # would, at a fraction of its cost.
        if self._devices_real is None:
            self._devices_real = os.path.realpath(self._devices_prefix)
        return os.path.normpath(os.path.join(self._devices_real, target))

    def resource_files(self, address: PciAddress) -> list[str]:
        """The function's BAR files (``resourceN``, ``resourceN_wc``): what user space mmaps."""
        base = self.device_dir(address) + "/"
        return [base + n for n in self.list_dir(base) if _is_resource_file(n)]

    def device_nodes_of(self, address: PciAddress) -> list[tuple[str, str]]:
        """``(DEVNAME, "MAJ:MIN")`` of the device nodes drivers created for the function.

        A driver's class device is a real directory with a ``dev`` file, directly under the
        function's directory or one level down in a class-named one (``rebellions/rbln0``,
        ``vfio-dev/vfio0``, ``drm/card0``). DEVNAME comes from its ``uevent``
        (``DEVNAME=vfio/devices/vfio0``), else the directory's name. Symlinks (``driver``,
        ``physfn``, ``virtfnN``, ``subsystem``) and child PCI functions (below a bridge) are
        not entered, so another function's nodes never show up. Cost: two levels of
        listings under one function directory.
        """
        base = self.device_dir(address)
        found: list[tuple[str, str]] = []
        for child in _real_subdirs(base):
            if child.name in _NOT_CLASS_DIRS or PciAddress.from_sysfs_name(child.name) is not None:
                continue
            for candidate in (child.path, *(sub.path for sub in _real_subdirs(child.path))):
                numbers = self.read_text(candidate + "/dev")
                if numbers is None or not _is_dev_numbers(numbers):
                    continue
                devname = self._uevent_devname(candidate) or os.path.basename(candidate)
                found.append((devname, numbers.strip()))
        return found

    def _uevent_devname(self, class_device_dir: str) -> Optional[str]:
        text = self.read_text(os.path.join(class_device_dir, "uevent")) or ""
        for line in text.splitlines():
            if line.startswith("DEVNAME="):
                name = line[len("DEVNAME=") :].strip()
                return name if _valid_devname(name) else None
        return None

    def dev_node_path(self, devname: str) -> str:
        """Where a node (uevent DEVNAME, e.g. ``vfio/9``) is under our /dev (``--dev-root``)."""
        if not _valid_devname(devname):
            raise UsageError(f"{devname!r} is not a device node name")
        return os.path.join(self.dev_root, devname)

    @staticmethod
    def canonical_dev_path(devname: str) -> str:
        """The node as processes on the host name it (``/dev/DEVNAME``), to match their fds."""
        if not _valid_devname(devname):
            raise UsageError(f"{devname!r} is not a device node name")
        return os.path.join(DEFAULT_DEV_ROOT, devname)

    def canonical_sys_path(self, path: str) -> str:
        """``path`` under our sysfs root, named as the host names it (``/sys/...``).

        With ``--sysfs-root /host/sys`` another process's mapping of a BAR file still reads
        ``/sys/devices/...`` in its /proc/PID/maps; this gives the name to look for.
        """
        root = self.root.rstrip("/")
        if root and path.startswith(root + "/"):
            return DEFAULT_SYSFS_ROOT + path[len(root) :]
        return path

    def vfio_group_dev_numbers(self, group: int) -> Optional[str]:
        """``MAJ:MIN`` of /dev/vfio/N (``/sys/class/vfio/N/dev``); ``None`` when absent."""
        numbers = self.read_text(os.path.join(self.class_dir("vfio"), str(int(group)), "dev"))
        return numbers.strip() if numbers is not None and _is_dev_numbers(numbers) else None

    def resolve_dev_name(self, path: str) -> Optional[str]:
        """Kernel name of a /dev path as mount tables show it, through our /dev root.

        ``/dev/vda1`` -> ``vda1``; ``/dev/disk/by-uuid/X`` or ``/dev/mapper/root`` (udev
        symlinks) -> the name they resolve to (``vda1``, ``dm-0``). ``None`` for anything not
        under /dev or resolving outside it.
        """
        prefix = DEFAULT_DEV_ROOT + "/"
        if not path.startswith(prefix) or not _valid_devname(path[len(prefix) :]):
            return None
        real = os.path.realpath(os.path.join(self.dev_root, path[len(prefix) :]))
        root = os.path.realpath(self.dev_root)
        if not real.startswith(root.rstrip("/") + "/"):
            return None
        return os.path.basename(real)

    def block_devices(self) -> list[str]:
        """Every disk and partition (``/sys/class/block``: vda, vda1, nvme0n1, dm-0, md0)."""
        return self.list_dir(self.class_dir("block"))

    def block_realpath(self, name: str) -> str:
        """Resolved path of a block device: under its PCI function's /sys/devices path."""
        return os.path.realpath(os.path.join(self.class_dir("block"), _valid_name(name, "disk")))

    def block_dev_numbers(self, name: str) -> Optional[str]:
        numbers = self.read_text(
            os.path.join(self.class_dir("block"), _valid_name(name, "disk"), "dev")
        )
        return numbers.strip() if numbers is not None and _is_dev_numbers(numbers) else None

    def block_holders(self, name: str) -> list[str]:
        """Devices stacked on this one (dm-0 on vda2, md0 on nvme0n1p1)."""
        return self.list_dir(
            os.path.join(self.class_dir("block"), _valid_name(name, "disk"), "holders")
        )

    def block_slaves(self, name: str) -> list[str]:
        """Devices this one is stacked on (the reverse of :meth:`block_holders`)."""
        return self.list_dir(
            os.path.join(self.class_dir("block"), _valid_name(name, "disk"), "slaves")
        )

    def block_dm_name(self, name: str) -> Optional[str]:
        """Device-mapper name (``/dev/mapper/NAME``) of a dm-N device; ``None`` otherwise."""
        return self.read_text(
            os.path.join(self.class_dir("block"), _valid_name(name, "disk"), "dm", "name")
        )

    def net_interfaces(self) -> list[str]:
        return self.list_dir(self.class_dir("net"))

    def net_realpath(self, iface: str) -> str:
        """Resolved path of an interface; physical ones lie under their PCI function."""
        return os.path.realpath(
            os.path.join(self.class_dir("net"), _valid_name(iface, "interface"))
        )

    def net_uppers(self, iface: str) -> list[str]:
        """Interfaces stacked on this one: its ``master`` (bridge, bond) and ``upper_*`` (VLAN)."""
        base = os.path.join(self.class_dir("net"), _valid_name(iface, "interface"))
        uppers = [n[len("upper_") :] for n in self.list_dir(base) if n.startswith("upper_")]
        master = self.link_name(os.path.join(base, "master"))
        if master is not None and master not in uppers:
            uppers.append(master)
        return uppers


# Entries of a function's directory that are never class devices (skipped by device_nodes_of).
_NOT_CLASS_DIRS = frozenset({"power", "msi_irqs", "driver", "subsystem", "firmware_node"})


def _is_resource_file(name: str) -> bool:
    if not name.startswith("resource"):
        return False
    index = name[len("resource") :]
    index = index[: -len("_wc")] if index.endswith("_wc") else index
    return index.isdecimal()


def _real_subdirs(path: str) -> list[os.DirEntry[str]]:
    """Sub-directories that are not symlinks, in name order, from one ``scandir``: the
    entry's type comes with the listing, so no ``stat`` per entry."""
    try:
        with os.scandir(path) as entries:
            found = [e for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
    return sorted(found, key=lambda e: e.name)


def _is_dev_numbers(text: str) -> bool:
    major, sep, minor = text.strip().partition(":")
    return bool(sep) and major.isdecimal() and minor.isdecimal()


def _valid_devname(name: str) -> bool:
    """A relative node name with no empty, ``.`` or ``..`` component (no escape from /dev)."""
    parts = name.split("/")
    return bool(name) and "\0" not in name and all(p not in {"", ".", ".."} for p in parts)

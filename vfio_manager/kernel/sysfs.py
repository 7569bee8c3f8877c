"""The one module that builds paths under /sys and /dev (``--sysfs-root``, ``--dev-root``).
Reads give ``None`` for a vanished or garbled file; each write is one unbuffered ``os.write``
that returns the kernel's errno (kernel-facts K1)."""

from __future__ import annotations

import operator
import os
import re
import threading
from collections.abc import Callable
from typing import Optional

from vfio_manager.errors import HostNotReadyError, SysfsWriteError, UsageError
from vfio_manager.kernel.address import PciAddress

DEFAULT_SYSFS_ROOT = "/sys"
DEFAULT_DEV_ROOT = "/dev"
_READ_LIMIT = 4096  # sysfs attributes are at most a page
# sorts by tuples compared in C, not by PciAddress.__lt__ called per comparison
_address_order = operator.attrgetter("domain", "bus", "device", "function")
_RESOURCE_FILE = re.compile(r"resource\d+(?:_wc)?")
# entries of a function's folder that are never class devices
_NOT_CLASS_DIRS = frozenset({"power", "msi_irqs", "driver", "subsystem", "firmware_node"})


class Unwritten(OSError):
    """The write syscall was not made (its file could not be opened): nothing reached the
    kernel, and the write is not counted."""


def direct_write(path: str, payload: bytes, opened: Callable[[], object] = lambda: None) -> None:
    """One unbuffered write in this process; the kernel's errno comes back as OSError.
    ``opened`` is called between the open and the write syscall."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise Unwritten(exc.errno, exc.strerror, path) from exc
    try:
        opened()
        os.write(fd, payload)
    finally:
        os.close(fd)


class Sysfs:
    """Typed access to the PCI, IOMMU and VFIO parts of sysfs and /dev. :meth:`writes_to`
    counts the writes; ``transport`` makes them (:func:`direct_write`, or the safety layer's)."""

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
        self._writes_to: dict[str, int] = {}
        self._count_lock = threading.Lock()
        # built once: a node of 4,096 functions asks for tens of thousands of paths below it
        self._devices_prefix = os.path.join(self.root, "bus", "pci", "devices") + "/"
        self._devices_real: Optional[str] = None
        self._vfio_dir = os.path.join(self.dev_root, "vfio")

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def device_dir(self, address: PciAddress) -> str:
        return f"{self._devices_prefix}{address}"

    def _device_attr(self, address: PciAddress, name: str) -> str:
        return os.path.join(self.device_dir(address), valid_name(name, "attribute"))

    def _driver_dir(self, driver: str) -> str:
        return self._path("bus", "pci", "drivers", valid_name(driver, "driver"))

    def vfio_dev_path(self, group: int) -> str:
        return os.path.join(self._vfio_dir, str(group))

    def module_dir(self, module: str) -> str:
        return self._path("module", valid_name(module, "module"))

    @staticmethod
    def read_text(path: str) -> Optional[str]:
        """A small file's content without its trailing newline; ``None`` if unreadable."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.read(fd, _READ_LIMIT)
            finally:
                os.close(fd)
        except OSError:
            return None
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

    def list_functions(self) -> list[PciAddress]:
        """Every PCI function the kernel knows, in address order (one listing). A root
        without ``bus/pci/devices`` is not a sysfs (a typo, an unmounted hostPath): an error."""
        try:
            names = os.listdir(self._devices_prefix)
        except OSError as exc:
            raise HostNotReadyError(
                f"{self.root} has no bus/pci/devices ({exc.strerror}): it is not a sysfs",
                path=self._devices_prefix,
                errno=exc.errno,
                remedy="point --sysfs-root (VFIO_MANAGER_SYSFS_ROOT) at the host's sysfs, "
                "default /sys; in a container, mount the host's /sys there",
            ) from exc
        found = (PciAddress.from_sysfs_name(n) for n in names)
        return sorted((a for a in found if a is not None), key=_address_order)

    def function_exists(self, address: PciAddress) -> bool:
        return os.path.isdir(self.device_dir(address))

    def read_device_attr(self, address: PciAddress, name: str) -> Optional[str]:
        return self.read_text(self._device_attr(address, name))

    def vfs_of(self, pf: PciAddress) -> list[PciAddress]:
        """The PF's VFs, from its ``virtfnK`` links (K17): one listing, so an odd
        ``sriov_numvfs`` value costs nothing."""
        links = [n for n in self.list_dir(self.device_dir(pf)) if n.startswith("virtfn")]
        names = (self.link_name(self._device_attr(pf, n)) for n in links)
        found = (PciAddress.from_sysfs_name(n) for n in names if n is not None)
        return sorted((a for a in found if a is not None), key=_address_order)

    def driver_of(self, address: PciAddress) -> Optional[str]:
        """The bound driver, from the ``driver`` link: the only truth about binding."""
        return self.link_name(self._device_attr(address, "driver"))

    def override_of(self, address: PciAddress) -> Optional[str]:
        """``driver_override``; ``None`` when the kernel shows ``(null)`` or the file is absent."""
        value = self.read_device_attr(address, "driver_override")
        return None if value in (None, "", "(null)") else value

    def iommu_group_of(self, address: PciAddress) -> Optional[int]:
        name = self.link_name(f"{self._devices_prefix}{address}/iommu_group")
        return int(name) if name is not None and _is_number(name) else None

    def iommu_group_names(self) -> list[str]:
        return [n for n in self.list_dir(self._path("kernel", "iommu_groups")) if _is_number(n)]

    def iommu_units(self) -> list[str]:
        return self.list_dir(self._path("class", "iommu"))

    def driver_registered(self, driver: str) -> bool:
        return os.path.isdir(self._driver_dir(driver))

    def driver_modules(self) -> dict[str, Optional[str]]:
        """Registered PCI driver -> its module (``drivers/NAME/module``); ``None``: built in."""
        base = self._path("bus", "pci", "drivers")
        return {d: self.link_name(os.path.join(base, d, "module")) for d in self.list_dir(base)}

    def acpi_tables(self, *names: str) -> Optional[frozenset[str]]:
        """Which of ``names`` the firmware's ACPI tables include; ``None`` when none are visible."""
        base = self._path("firmware", "acpi", "tables")
        if not os.path.isdir(base):
            return None
        return frozenset(n for n in names if os.path.lexists(os.path.join(base, n)))

    def module_present(self, module: str) -> bool:
        """/sys/module/NAME exists: loaded, or built in with parameters."""
        return os.path.isdir(self.module_dir(module))

    def module_pci_drivers(self, module: str) -> list[str]:
        entries = self.list_dir(os.path.join(self.module_dir(module), "drivers"))
        return [e[len("pci:") :] for e in entries if e.startswith("pci:")]

    def vfio_devs(self) -> frozenset[str]:
        return frozenset(self.list_dir(self._vfio_dir))

    def vfio_dev_exists(self, group: int) -> bool:
        return os.path.exists(self.vfio_dev_path(group))

    def config_all_ones(self, address: PciAddress) -> bool:
        """The function's config header (64 bytes) reads all-ones: it stopped responding
        (kernel-facts K27). Not the IDs alone: a VF's read all-ones by design (K24). ``False``
        when ``config`` cannot be read (we cannot tell)."""
        try:
            fd = os.open(self._device_attr(address, "config"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                header = os.read(fd, 64)
            finally:
                os.close(fd)
        except OSError:
            return False
        return len(header) == 64 and header == b"\xff" * 64

    def vfio_cdev_of(self, address: PciAddress) -> Optional[str]:
        """The function's VFIO device cdev, ``/dev/vfio/devices/vfioK`` under our /dev, when
        the kernel made it (CONFIG_VFIO_DEVICE_CDEV: kernel-facts K25); ``None`` otherwise."""
        for name in self.list_dir(os.path.join(self.device_dir(address), "vfio-dev")):
            path = os.path.join(self._vfio_dir, "devices", name)
            if name.startswith("vfio") and os.path.exists(path):
                return path
        return None

    def write(self, path: str, data: str, *, subject: Optional[str] = None) -> None:
        """One write; the errno comes back as :class:`SysfsWriteError`. ``subject``: its BDF."""
        made = True
        try:
            self.transport(path, data.encode())
        except OSError as exc:
            made = not isinstance(exc, Unwritten)
            raise SysfsWriteError.from_os_error(exc, path=path, data=data) from exc
        finally:
            if made and subject is not None:
                with self._count_lock:
                    self._writes_to[subject] = self._writes_to.get(subject, 0) + 1

    def writes_to(self, bdf: str) -> int:
        """Writes about one function that reached the kernel (or may have: a write stuck, or
        cut short by its writer's death): its attributes, and driver and bus files by its BDF."""
        with self._count_lock:
            return self._writes_to.get(bdf, 0)

    def write_device_attr(self, address: PciAddress, name: str, data: str) -> None:
        self.write(self._device_attr(address, name), data, subject=str(address))

    def write_driver_file(self, driver: str, name: str, data: str) -> None:
        path = os.path.join(self._driver_dir(driver), valid_name(name, "driver file"))
        self.write(path, data, subject=data.strip() or None)

    def write_bus_file(self, name: str, data: str) -> None:
        path = self._path("bus", "pci", valid_name(name, "bus file"))
        self.write(path, data, subject=data.strip() or None)

    def device_realpath(self, address: PciAddress) -> str:
        """The function's /sys/devices/... path, as /proc/PID/maps and class links name it."""
        link = self.device_dir(address)
        try:
            target = os.readlink(link)
        except OSError:  # not a link (a test tree), or gone
            target = ""
        if not target.startswith("../"):
            return os.path.realpath(link)
        # the link climbs only through real folders: no lstat per component (as realpath does)
        if self._devices_real is None:
            self._devices_real = os.path.realpath(self._devices_prefix)
        return os.path.normpath(os.path.join(self._devices_real, target))

    def resource_files(self, address: PciAddress) -> list[str]:
        """The function's BAR files (``resourceN``, ``resourceN_wc``): what user space mmaps."""
        base = self.device_dir(address) + "/"
        return [base + n for n in self.list_dir(base) if _RESOURCE_FILE.fullmatch(n)]

    def char_devs_of(self, address: PciAddress) -> list[tuple[str, str]]:
        """``(DEVNAME, "MAJ:MIN")`` of the class devices drivers made for the function: real
        folders with a ``dev`` file in its folder or one below (``drm/card0``), never through a
        symlink or a child function; DEVNAME from ``uevent``, else the folder's name."""
        found: list[tuple[str, str]] = []
        for child in _real_subdirs(self.device_dir(address)):
            if child.name in _NOT_CLASS_DIRS or PciAddress.from_sysfs_name(child.name) is not None:
                continue
            for candidate in (child.path, *(sub.path for sub in _real_subdirs(child.path))):
                numbers = _dev_numbers(self.read_text(candidate + "/dev"))
                if numbers is not None:
                    devname = self._uevent_devname(candidate) or os.path.basename(candidate)
                    found.append((devname, numbers))
        return found

    def _uevent_devname(self, class_device_dir: str) -> Optional[str]:
        lines = (self.read_text(os.path.join(class_device_dir, "uevent")) or "").splitlines()
        name = next((n[len("DEVNAME=") :].strip() for n in lines if n.startswith("DEVNAME=")), "")
        return name if _valid_devname(name) else None

    def dev_path(self, devname: str) -> str:
        """Where a node (uevent DEVNAME, e.g. ``vfio/9``) is under our /dev (``--dev-root``)."""
        return os.path.join(self.dev_root, _checked_devname(devname))

    @staticmethod
    def canonical_dev_path(devname: str) -> str:
        """The node as processes on the host name it (``/dev/DEVNAME``), to match their fds."""
        return os.path.join(DEFAULT_DEV_ROOT, _checked_devname(devname))

    def canonical_sys_path(self, path: str) -> str:
        """``path`` under our sysfs root as the host names it (``/sys/...``, as in its maps)."""
        root = self.root.rstrip("/")
        if root and path.startswith(root + "/"):
            return DEFAULT_SYSFS_ROOT + path[len(root) :]
        return path

    def vfio_group_dev_numbers(self, group: int) -> Optional[str]:
        return _dev_numbers(self.read_text(self._path("class", "vfio", str(int(group)), "dev")))

    def resolve_dev_name(self, path: str) -> Optional[str]:
        """Kernel name of a /dev path of a mount table (``/dev/mapper/root`` -> ``dm-0``) through
        our /dev root; ``None`` for anything not under /dev or resolving outside it."""
        prefix = DEFAULT_DEV_ROOT + "/"
        if not path.startswith(prefix) or not _valid_devname(path[len(prefix) :]):
            return None
        real = os.path.realpath(os.path.join(self.dev_root, path[len(prefix) :]))
        inside = real.startswith(os.path.realpath(self.dev_root).rstrip("/") + "/")
        return os.path.basename(real) if inside else None

    def class_devices(self, kind: str) -> dict[str, str]:
        """``/sys/class/KIND`` (``block``, ``net``): name -> its resolved /sys/devices path,
        under its PCI function's for a physical device."""
        base = self._path("class", kind)
        return {n: os.path.realpath(os.path.join(base, n)) for n in self.list_dir(base)}

    def _block(self, name: str, *parts: str) -> str:
        return os.path.join(self._path("class", "block"), valid_name(name, "disk"), *parts)

    def block_dev_numbers(self, name: str) -> Optional[str]:
        return _dev_numbers(self.read_text(self._block(name, "dev")))

    def block_holders(self, name: str) -> list[str]:
        """Devices stacked on this one (dm-0 on vda2, md0 on nvme0n1p1)."""
        return self.list_dir(self._block(name, "holders"))

    def block_slaves(self, name: str) -> list[str]:
        return self.list_dir(self._block(name, "slaves"))

    def block_dm_name(self, name: str) -> Optional[str]:
        """Device-mapper name (``/dev/mapper/NAME``) of a dm-N device."""
        return self.read_text(self._block(name, "dm", "name"))

    def net_uppers(self, iface: str) -> list[str]:
        """Interfaces stacked on this one: its ``master`` (bridge, bond) and ``upper_*`` (VLAN)."""
        base = os.path.join(self._path("class", "net"), valid_name(iface, "interface"))
        uppers = [n[len("upper_") :] for n in self.list_dir(base) if n.startswith("upper_")]
        master = self.link_name(os.path.join(base, "master"))
        return [*uppers, master] if master is not None and master not in uppers else uppers


def _is_number(name: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²', which int() then refuses."""
    return name.isascii() and name.isdigit()


def valid_name(name: str, what: str) -> str:
    """Refuse a driver, module or file name that could climb out of its folder, or end an
    override's value early: one path component, no blank or control character."""
    if name in {"", ".", ".."} or "/" in name or " " in name or not name.isprintable():
        raise UsageError(f"{name!r} is not a valid {what} name")
    return name


def _real_subdirs(path: str) -> list[os.DirEntry[str]]:
    """Sub-folders that are not symlinks, by name, from one ``scandir`` (no stat per entry)."""
    try:
        with os.scandir(path) as entries:
            found = [e for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
    return sorted(found, key=lambda e: e.name)


def _dev_numbers(text: Optional[str]) -> Optional[str]:
    major, sep, minor = (text or "").strip().partition(":")
    return f"{major}:{minor}" if sep and major.isdecimal() and minor.isdecimal() else None


def _valid_devname(name: str) -> bool:
    """A relative node name with no empty, ``.`` or ``..`` component (no escape from /dev)."""
    return "\0" not in name and all(p not in {"", ".", ".."} for p in name.split("/"))


def _checked_devname(devname: str) -> str:
    if not _valid_devname(devname):
        raise UsageError(f"{devname!r} is not a device node name")
    return devname

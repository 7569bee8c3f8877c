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

import os
from typing import Optional

from vfio_manager.address import PciAddress
from vfio_manager.errors import SysfsWriteError, UsageError

DEFAULT_SYSFS_ROOT = "/sys"
DEFAULT_DEV_ROOT = "/dev"
_READ_LIMIT = 4096  # sysfs attributes are at most a page


def _valid_name(name: str, what: str) -> str:
    """Refuse a driver or module name that could climb out of its directory."""
    if not name or "/" in name or name in {".", ".."} or "\0" in name:
        raise UsageError(f"{name!r} is not a valid {what} name")
    return name


class Sysfs:
    """Typed access to the PCI, IOMMU and VFIO parts of sysfs and /dev.

    ``writes`` counts the writes made through this object, so callers (and tests) can prove
    that a converged node is left alone.
    """

    def __init__(self, root: str = DEFAULT_SYSFS_ROOT, dev_root: str = DEFAULT_DEV_ROOT) -> None:
        self.root = root.rstrip("/") or "/"
        self.dev_root = dev_root.rstrip("/") or "/"
        self.writes = 0

    # -- paths ---------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def device_dir(self, address: PciAddress) -> str:
        return self._path("bus", "pci", "devices", str(address))

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
        return sorted(a for a in found if a is not None)

    def function_exists(self, address: PciAddress) -> bool:
        return os.path.isdir(self.device_dir(address))

    def device_entries(self, address: PciAddress) -> frozenset[str]:
        """Names in the function's directory: tells which optional attributes exist."""
        return frozenset(self.list_dir(self.device_dir(address)))

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
        name = self.device_link(address, "iommu_group")
        return int(name) if name is not None and name.isdigit() else None

    def iommu_groups(self) -> dict[int, list[PciAddress]]:
        """Every IOMMU group and its members, read once (no per-function scans)."""
        base = self.iommu_groups_dir()
        groups: dict[int, list[PciAddress]] = {}
        for name in self.list_dir(base):
            if not name.isdigit():
                continue
            members = (
                PciAddress.from_sysfs_name(m)
                for m in self.list_dir(os.path.join(base, name, "devices"))
            )
            groups[int(name)] = sorted(a for a in members if a is not None)
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

    # -- writes -------------------------------------------------------------------------------
    def write(self, path: str, data: str) -> None:
        """One unbuffered write; the kernel's errno comes back as :class:`SysfsWriteError`."""
        payload = data.encode()
        self.writes += 1
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            raise SysfsWriteError.from_os_error(exc, path=path, data=data) from exc
        try:
            os.write(fd, payload)
        except OSError as exc:
            raise SysfsWriteError.from_os_error(exc, path=path, data=data) from exc
        finally:
            os.close(fd)

    def write_device_attr(self, address: PciAddress, name: str, data: str) -> None:
        self.write(self.device_attr_path(address, name), data)

    def write_driver_file(self, driver: str, name: str, data: str) -> None:
        self.write(self.driver_file_path(driver, name), data)

    def write_bus_file(self, name: str, data: str) -> None:
        self.write(self.bus_file_path(name), data)

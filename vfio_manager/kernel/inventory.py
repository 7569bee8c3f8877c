"""Reads a node's PCI topology from sysfs: each attribute once, groups indexed once
(``status`` reads one ``modalias`` per function for its IDs; see docs/performance.md)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Optional

from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import is_vfio_driver
from vfio_manager.kernel.model import PciFunction, Topology
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.log import get_logger

log = get_logger("vfio_manager.kernel.inventory")

_IDENTITY_FILES = ("vendor", "device", "class")
# pci_uevent()'s format: "pci:v%08Xd%08Xsv%08Xsd%08Xbc%02Xsc%02Xi%02X"
_MODALIAS = re.compile(
    r"pci:v([0-9A-F]{8})d([0-9A-F]{8})sv([0-9A-F]{8})sd([0-9A-F]{8})"
    r"bc([0-9A-F]{2})sc([0-9A-F]{2})i([0-9A-F]{2})",
    re.ASCII | re.IGNORECASE,
)


def _number(value: Optional[str], base: int = 16) -> Optional[int]:
    try:
        return int(value.strip(), base) if value is not None else None
    except ValueError:
        return None


def parse_modalias(text: Optional[str]) -> Optional[tuple[int, int, int, int, int]]:
    """(vendor, device, subsystem vendor, subsystem device, class) from a PCI ``modalias``;
    ``None`` for anything but the kernel's exact format, so the reader falls back to the files."""
    match = _MODALIAS.fullmatch(text) if text is not None else None
    if match is None:
        return None
    vendor, device, sub_vendor, sub_device, base, sub, prog_if = (
        int(part, 16) for part in match.groups()
    )
    if max(vendor, device, sub_vendor, sub_device) > 0xFFFF:
        return None
    return vendor, device, sub_vendor, sub_device, (base << 16) | (sub << 8) | prog_if


def read_function(
    sysfs: Sysfs,
    address: PciAddress,
    *,
    wanted: Optional[Callable[[PciFunction], bool]] = None,
    driver_ids: bool = True,
    ids_from_modalias: bool = False,
) -> Optional[PciFunction]:
    """One function as sysfs shows it now; ``None`` if it is gone or unreadable. One ``wanted``
    rejects is read no further than its IDs, driver and group links. ``driver_ids=False``
    leaves out the subsystem IDs and modalias (only choosing a driver needs them). The ID files
    win over a ``modalias`` that disagrees, unless ``ids_from_modalias`` (``status``: one read)."""
    base = sysfs.device_dir(address) + "/"
    read = sysfs.read_text
    modalias = read(base + "modalias")
    ids = parse_modalias(modalias)
    subsystem: tuple[Optional[int], ...] = ids[2:4] if ids else (None, None)
    if ids is None or not ids_from_modalias:
        vendor, device, pci_class = (_number(read(base + name)) for name in _IDENTITY_FILES)
        if vendor is None or device is None or pci_class is None:
            return None
        if ids is None and driver_ids:
            subsystem = tuple(_number(read(f"{base}subsystem_{n}")) for n in ("vendor", "device"))
        elif ids is not None and (vendor, device, pci_class) != (ids[0], ids[1], ids[4]):
            log.warning(
                "sysfs identity disagrees",
                bdf=str(address),
                step="read",
                outcome="files win",
                files=f"{vendor:04x}:{device:04x} class {pci_class:06x}",
                modalias=modalias,
            )
    else:
        vendor, device, pci_class = ids[0], ids[1], ids[4]
    driver = sysfs.link_name(base + "driver")
    group = sysfs.iommu_group_of(address)
    if wanted is not None:
        brief = PciFunction(address, vendor, device, pci_class, driver=driver, iommu_group=group)
        if not wanted(brief):
            return brief
    # a failed open of an optional attribute costs less than listing the folder
    override = read(base + "driver_override")
    numa = _number(read(base + "numa_node"), 10)
    physfn_name = sysfs.link_name(base + "physfn")
    totalvfs = _number(read(base + "sriov_totalvfs"), 10)
    sriov = totalvfs is not None
    autoprobe = _number(read(base + "sriov_drivers_autoprobe"), 10) if sriov else None
    return PciFunction(
        address=address,
        vendor=vendor,
        device=device,
        pci_class=pci_class,
        subsystem_vendor=subsystem[0] if driver_ids else None,
        subsystem_device=subsystem[1] if driver_ids else None,
        driver=driver,
        driver_override=None if override in (None, "", "(null)") else override,
        iommu_group=group,
        numa_node=None if numa is None or numa < 0 else numa,
        modalias=modalias if driver_ids else None,
        sriov_totalvfs=totalvfs,
        sriov_numvfs=_number(read(base + "sriov_numvfs"), 10) if sriov else None,
        sriov_autoprobe=bool(autoprobe) if autoprobe is not None else None,
        sriov_vf_device=_number(read(base + "sriov_vf_device")) if sriov else None,
        physfn=PciAddress.from_sysfs_name(physfn_name) if physfn_name else None,
    )


NOT_RESPONDING = "it is not responding: its config space reads all-ones"


def not_responding_remedy(bdf: str) -> str:
    """What an admin can do about a function that reads all-ones (kernel-facts K27)."""
    device = f"/sys/bus/pci/devices/{bdf}"
    return (
        f"check `dmesg` for AER or link errors; try `echo 1 > {device}/reset`, or remove and "
        f"rescan it (`echo 1 > {device}/remove; echo 1 > /sys/bus/pci/rescan`); if it still "
        "reads all-ones, reboot the host"
    )


def not_responding(sysfs: Sysfs, function: PciFunction) -> bool:
    """Its vendor reads 0xffff or its config space all-ones (kernel-facts K27): one read,
    made only for the functions a command is about."""
    return function.vendor == 0xFFFF or sysfs.config_all_ones(function.address)


def read_topology(
    sysfs: Sysfs,
    *,
    wanted: Optional[Callable[[PciFunction], bool]] = None,
    driver_ids: bool = True,
    ids_from_modalias: bool = False,
) -> Topology:
    """Every function and IOMMU group, the /dev/vfio nodes and device cdevs, the driver->module map
    (``wanted``, ``driver_ids``, ``ids_from_modalias``: see :func:`read_function`)."""
    read = functools.partial(
        read_function,
        sysfs,
        wanted=wanted,
        driver_ids=driver_ids,
        ids_from_modalias=ids_from_modalias,
    )
    found = (read(address) for address in sysfs.list_functions())
    functions = {f.address: f for f in found if f is not None}
    members: dict[int, list[PciAddress]] = {}
    for f in functions.values():
        if f.iommu_group is not None:
            members.setdefault(f.iommu_group, []).append(f.address)
    groups = {n: tuple(m) for n, m in members.items()}
    on_vfio = (a for a, f in functions.items() if is_vfio_driver(f.driver))
    cdevs = {a: cdev for a in on_vfio if (cdev := sysfs.vfio_cdev_of(a)) is not None}
    return Topology(functions, groups, sysfs.vfio_devs(), sysfs.driver_modules(), cdevs)

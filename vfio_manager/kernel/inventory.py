"""Reads a node's PCI topology from sysfs: each attribute once, groups indexed once.

Costs: ``status`` reads one ``modalias`` per function for its vendor, device, subsystem IDs
and class (the kernel formats it from the same fields as those five files); a function the
selection rejects costs that read and its ``driver`` link. A run that may write reads the
vendor, device and class files too (they are the authority, see :func:`read_function`).
A selected function adds its override, NUMA node and SR-IOV attributes: a few reads per
function and no quadratic scan.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Optional

from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.model import PciFunction, Topology
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.log import get_logger

log = get_logger("vfio_manager.kernel.inventory")


def _hex(value: Optional[str]) -> Optional[int]:
    if value is None:
        return None
    try:
        return int(value.strip(), 16)
    except ValueError:
        return None


def _int(value: Optional[str]) -> Optional[int]:
    if value is None:
        return None
    try:
        return int(value.strip(), 10)
    except ValueError:
        return None


_IDENTITY_FILES = ("vendor", "device", "class")
# pci_uevent()'s format: "pci:v%08Xd%08Xsv%08Xsd%08Xbc%02Xsc%02Xi%02X"
_MODALIAS = re.compile(
    r"pci:v([0-9A-F]{8})d([0-9A-F]{8})sv([0-9A-F]{8})sd([0-9A-F]{8})"
    r"bc([0-9A-F]{2})sc([0-9A-F]{2})i([0-9A-F]{2})",
    re.ASCII | re.IGNORECASE,
)


def parse_modalias(text: Optional[str]) -> Optional[tuple[int, int, int, int, int]]:
    """(vendor, device, subsystem vendor, subsystem device, class) from a PCI ``modalias``.

    ``None`` for anything that is not exactly the kernel's PCI format, so that an odd file
    sends the reader back to the separate attributes instead of to a wrong ID.
    """
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
    group: Optional[int] = None,
    wanted: Optional[Callable[[PciFunction], bool]] = None,
    driver_ids: bool = True,
    ids_from_modalias: bool = False,
) -> Optional[PciFunction]:
    """One function as sysfs shows it now; ``None`` if it is gone or unreadable.

    ``group`` is its IOMMU group when the caller indexed the groups already (else the
    ``iommu_group`` link is read). With ``wanted``, a function it rejects by vendor, device
    and class is read no further than those and its driver link: all a group-viability
    question asks of a non-selected group member. ``driver_ids=False`` leaves the subsystem
    IDs and the modalias out of the result (only choosing a driver needs them; ``status``
    shows neither); they cost two more reads only where ``modalias`` could not be parsed.

    Identity (vendor, device, class) comes from its own files, the authority for anything
    that may lead to a write; ``modalias`` then gives the subsystem IDs. The kernel formats
    both from the same ``pci_dev`` fields, so they disagree only in a corrupted or faked
    sysfs: the files win and a warning says so. ``ids_from_modalias=True`` (``status``,
    which writes nothing) takes the identity from ``modalias`` alone: one read instead of
    four for each of the thousands of functions a large node shows.
    """
    base = sysfs.device_dir(address) + "/"
    read = sysfs.read_text
    modalias = read(base + "modalias")
    ids = parse_modalias(modalias)
    vendor: Optional[int]
    device: Optional[int]
    pci_class: Optional[int]
    sub_vendor: Optional[int]
    sub_device: Optional[int]
    if ids is not None and ids_from_modalias:
        vendor, device, sub_vendor, sub_device, pci_class = ids
    else:
        vendor, device, pci_class = (_hex(read(base + name)) for name in _IDENTITY_FILES)
        if vendor is None or device is None or pci_class is None:
            return None
        if ids is not None:
            sub_vendor, sub_device = ids[2], ids[3]
            if (vendor, device, pci_class) != (ids[0], ids[1], ids[4]):
                log.warning(
                    "sysfs identity disagrees",
                    bdf=str(address),
                    step="read",
                    outcome="files win",
                    files=f"{vendor:04x}:{device:04x} class {pci_class:06x}",
                    modalias=modalias,
                )
        else:
            sub_vendor = _hex(read(base + "subsystem_vendor")) if driver_ids else None
            sub_device = _hex(read(base + "subsystem_device")) if driver_ids else None
    driver = sysfs.link_name(base + "driver")
    if wanted is not None:
        brief = PciFunction(
            address=address,
            vendor=vendor,
            device=device,
            pci_class=pci_class,
            driver=driver,
            iommu_group=group,
        )
        if not wanted(brief):
            return brief
    # Optional attributes are read where they may exist: a failed open costs less than
    # listing a folder of 40 entries, and SR-IOV's numvfs is asked only of a capable PF.
    override = read(base + "driver_override")
    numa = _int(read(base + "numa_node"))
    if group is None:
        group = sysfs.iommu_group_of(address)
    physfn_name = sysfs.link_name(base + "physfn")
    totalvfs = _int(read(base + "sriov_totalvfs"))
    return PciFunction(
        address=address,
        vendor=vendor,
        device=device,
        pci_class=pci_class,
        subsystem_vendor=sub_vendor if driver_ids else None,
        subsystem_device=sub_device if driver_ids else None,
        driver=driver,
        driver_override=None if override in (None, "", "(null)") else override,
        iommu_group=group,
        numa_node=None if numa is None or numa < 0 else numa,
        modalias=modalias if driver_ids else None,
        sriov_totalvfs=totalvfs,
        sriov_numvfs=_int(read(base + "sriov_numvfs")) if totalvfs is not None else None,
        physfn=PciAddress.from_sysfs_name(physfn_name) if physfn_name else None,
    )


def read_topology(
    sysfs: Sysfs,
    *,
    wanted: Optional[Callable[[PciFunction], bool]] = None,
    driver_ids: bool = True,
    ids_from_modalias: bool = False,
) -> Topology:
    """Every function, every IOMMU group, the /dev/vfio nodes and the driver->module map.

    ``wanted`` (a selection): functions it rejects are read only as far as a group question
    needs (see :func:`read_function`); ``status`` passes it, the write pipeline does not.
    ``driver_ids``, ``ids_from_modalias``: see :func:`read_function`.
    """
    addresses = sysfs.list_functions()
    # Each function's iommu_group link (one readlink) rather than a listing of every group's
    # devices/ folder: the same membership, a third of the cost on a node of 4,096 groups.
    group_of: dict[PciAddress, int] = {}
    members: dict[int, list[PciAddress]] = {}
    for address in addresses:
        group = sysfs.iommu_group_of(address)
        if group is not None:
            group_of[address] = group
            members.setdefault(group, []).append(address)  # in address order, as listed
    groups = {n: tuple(m) for n, m in members.items()}
    functions: dict[PciAddress, PciFunction] = {}
    for address in addresses:
        function = read_function(
            sysfs,
            address,
            group=group_of.get(address),
            wanted=wanted,
            driver_ids=driver_ids,
            ids_from_modalias=ids_from_modalias,
        )
        if function is not None:
            functions[address] = function
    modules = {name: sysfs.driver_module(name) for name in sysfs.list_drivers()}
    return Topology(
        functions=functions,
        groups=groups,
        vfio_nodes=sysfs.vfio_nodes(),
        driver_modules=modules,
    )

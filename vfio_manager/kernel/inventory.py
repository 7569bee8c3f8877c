"""Reads a node's PCI topology from sysfs: each attribute once, groups indexed once.

Costs: one directory listing of the function's folder plus one read per attribute the
listing shows; optional attributes (SR-IOV, boot_vga) are read only where they exist, so a
4,096-function SR-IOV host costs a few reads per function and no quadratic scan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.model import PciFunction, Topology
from vfio_manager.kernel.sysfs import Sysfs


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


def read_function(
    sysfs: Sysfs,
    address: PciAddress,
    *,
    group: Optional[int] = None,
    wanted: Optional[Callable[[PciFunction], bool]] = None,
    driver_ids: bool = True,
) -> Optional[PciFunction]:
    """One function as sysfs shows it now; ``None`` if it is gone or unreadable.

    ``group`` is its IOMMU group when the caller indexed the groups already (else the
    ``iommu_group`` link is read). With ``wanted``, a function it rejects by vendor, device
    and class is read no further than those and its driver link: all a group-viability
    question asks of a non-selected group member. ``driver_ids=False`` leaves out the
    subsystem IDs and the modalias, which only choosing a driver needs (three reads of
    eight: ``status`` shows neither).
    """
    base = sysfs.device_dir(address) + "/"
    read = sysfs.read_text
    vendor, device = _hex(read(base + "vendor")), _hex(read(base + "device"))
    pci_class = _hex(read(base + "class"))
    if vendor is None or device is None or pci_class is None:
        return None
    if wanted is not None:
        brief = PciFunction(address=address, vendor=vendor, device=device, pci_class=pci_class)
        if not wanted(brief):
            return PciFunction(
                address=address,
                vendor=vendor,
                device=device,
                pci_class=pci_class,
                driver=sysfs.link_name(base + "driver"),
                iommu_group=group,
            )
    entries = sysfs.device_entries(address)

    def attr(name: str) -> Optional[str]:
        return read(base + name) if name in entries else None

    override = attr("driver_override")
    numa = _int(attr("numa_node"))
    if group is None and "iommu_group" in entries:
        group = sysfs.iommu_group_of(address)
    physfn_name = sysfs.link_name(base + "physfn") if "physfn" in entries else None
    return PciFunction(
        address=address,
        vendor=vendor,
        device=device,
        pci_class=pci_class,
        subsystem_vendor=_hex(attr("subsystem_vendor")) if driver_ids else None,
        subsystem_device=_hex(attr("subsystem_device")) if driver_ids else None,
        driver=sysfs.link_name(base + "driver") if "driver" in entries else None,
        driver_override=None if override in (None, "", "(null)") else override,
        iommu_group=group,
        numa_node=None if numa is None or numa < 0 else numa,
        modalias=attr("modalias") if driver_ids else None,
        sriov_totalvfs=_int(attr("sriov_totalvfs")),
        sriov_numvfs=_int(attr("sriov_numvfs")),
        physfn=PciAddress.from_sysfs_name(physfn_name) if physfn_name else None,
        boot_vga=attr("boot_vga") == "1",
    )


def read_topology(
    sysfs: Sysfs,
    *,
    wanted: Optional[Callable[[PciFunction], bool]] = None,
    driver_ids: bool = True,
) -> Topology:
    """Every function, every IOMMU group, the /dev/vfio nodes and the driver->module map.

    ``wanted`` (a selection): functions it rejects are read only as far as a group question
    needs (see :func:`read_function`); ``status`` passes it, the write pipeline does not.
    ``driver_ids``: see :func:`read_function`.
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
            sysfs, address, group=group_of.get(address), wanted=wanted, driver_ids=driver_ids
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

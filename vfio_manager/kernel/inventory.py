"""Reads a node's PCI topology from sysfs: each attribute once, groups indexed once.

Costs: one directory listing of the function's folder plus one read per attribute the
listing shows; optional attributes (SR-IOV, boot_vga) are read only where they exist, so a
4,096-function SR-IOV host costs a few reads per function and no quadratic scan.
"""

from __future__ import annotations

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


def read_function(sysfs: Sysfs, address: PciAddress) -> Optional[PciFunction]:
    """One function as sysfs shows it now; ``None`` if it is gone or unreadable."""
    entries = sysfs.device_entries(address)
    if not entries:
        return None

    def attr(name: str) -> Optional[str]:
        return sysfs.read_device_attr(address, name) if name in entries else None

    vendor, device, pci_class = _hex(attr("vendor")), _hex(attr("device")), _hex(attr("class"))
    if vendor is None or device is None or pci_class is None:
        return None
    override = attr("driver_override")
    numa = _int(attr("numa_node"))
    group = sysfs.iommu_group_of(address) if "iommu_group" in entries else None
    physfn_name = sysfs.device_link(address, "physfn") if "physfn" in entries else None
    return PciFunction(
        address=address,
        vendor=vendor,
        device=device,
        pci_class=pci_class,
        subsystem_vendor=_hex(attr("subsystem_vendor")),
        subsystem_device=_hex(attr("subsystem_device")),
        driver=sysfs.driver_of(address) if "driver" in entries else None,
        driver_override=None if override in (None, "", "(null)") else override,
        iommu_group=group,
        numa_node=None if numa is None or numa < 0 else numa,
        modalias=attr("modalias"),
        sriov_totalvfs=_int(attr("sriov_totalvfs")),
        sriov_numvfs=_int(attr("sriov_numvfs")),
        physfn=PciAddress.from_sysfs_name(physfn_name) if physfn_name else None,
        boot_vga=attr("boot_vga") == "1",
    )


def read_topology(sysfs: Sysfs) -> Topology:
    """Every function, every IOMMU group, the /dev/vfio nodes and the driver->module map."""
    functions: dict[PciAddress, PciFunction] = {}
    for address in sysfs.list_functions():
        function = read_function(sysfs, address)
        if function is not None:
            functions[address] = function
    groups = {n: tuple(members) for n, members in sysfs.iommu_groups().items()}
    modules = {name: sysfs.driver_module(name) for name in sysfs.list_drivers()}
    return Topology(
        functions=functions,
        groups=groups,
        vfio_nodes=sysfs.vfio_nodes(),
        driver_modules=modules,
    )

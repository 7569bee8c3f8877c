"""Frozen snapshots of a node's PCI functions and IOMMU groups, read once per command
(:mod:`vfio_manager.kernel.inventory`) and then only looked up."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional

from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.catalogue import product_name

# PCI header type 1/2 functions (PCI-PCI bridges, CardBus bridges): vfio-pci refuses them.
_BRIDGE_CLASSES = frozenset({0x0604, 0x0607, 0x0609})


@dataclass(frozen=True)
class PciFunction:
    """One PCI function as sysfs showed it when the topology was read."""

    address: PciAddress
    vendor: int
    device: int
    pci_class: int
    subsystem_vendor: Optional[int] = None
    subsystem_device: Optional[int] = None
    driver: Optional[str] = None
    driver_override: Optional[str] = None
    iommu_group: Optional[int] = None
    numa_node: Optional[int] = None
    modalias: Optional[str] = None
    sriov_totalvfs: Optional[int] = None
    sriov_numvfs: Optional[int] = None
    sriov_autoprobe: Optional[bool] = None
    sriov_vf_device: Optional[int] = None  # the device ID its VFs have
    physfn: Optional[PciAddress] = None

    @property
    def bdf(self) -> str:
        return str(self.address)

    @property
    def product(self) -> Optional[str]:
        return product_name(self.vendor, self.device)

    @property
    def is_bridge(self) -> bool:
        return (self.pci_class >> 8) in _BRIDGE_CLASSES

    @property
    def is_pf_with_vfs(self) -> bool:
        return bool(self.sriov_numvfs)

    @property
    def can_sriov(self) -> bool:
        """A PF that can carry VFs (``sriov_totalvfs`` > 0)."""
        return bool(self.sriov_totalvfs) and self.physfn is None

    @property
    def sriov_role(self) -> Optional[str]:
        if self.physfn is not None:
            return f"VF of {self.physfn}"
        if self.sriov_totalvfs:
            return f"PF with {self.sriov_numvfs or 0}/{self.sriov_totalvfs} VFs"
        return None


@dataclass(frozen=True)
class Topology:
    """All functions and IOMMU groups of a node, indexed once."""

    functions: dict[PciAddress, PciFunction]
    groups: dict[int, tuple[PciAddress, ...]]
    vfio_devs: frozenset[str] = field(default_factory=frozenset)
    driver_modules: dict[str, Optional[str]] = field(default_factory=dict)
    vfio_cdevs: dict[PciAddress, str] = field(default_factory=dict)

    def get(self, address: PciAddress) -> Optional[PciFunction]:
        return self.functions.get(address)

    def group_members(self, function: PciFunction) -> tuple[PciFunction, ...]:
        """The functions that must be owned together with ``function`` (itself included)."""
        if function.iommu_group is None:
            return (function,)
        members = self.groups.get(function.iommu_group, (function.address,))
        return tuple(self.functions[a] for a in members if a in self.functions)

    def vfs_of(self, pf: PciFunction) -> list[PciFunction]:
        """The VFs of ``pf`` present, in address order."""
        return self._vfs.get(pf.address, [])

    @functools.cached_property
    def _vfs(self) -> dict[PciAddress, list[PciFunction]]:
        found: dict[PciAddress, list[PciFunction]] = {}
        for _address, function in sorted(self.functions.items()):
            if function.physfn is not None:
                found.setdefault(function.physfn, []).append(function)
        return found

    def vfio_dev(self, function: PciFunction) -> Optional[str]:
        """``/dev/vfio/N`` name of the function's group when the node exists."""
        name = str(function.iommu_group)
        return name if function.iommu_group is not None and name in self.vfio_devs else None

    def vfio_cdev(self, function: PciFunction) -> Optional[str]:
        """The function's ``/dev/vfio/devices/vfioK`` when the node exists (kernel-facts K25)."""
        return self.vfio_cdevs.get(function.address)

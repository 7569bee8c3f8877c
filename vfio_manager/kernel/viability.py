"""IOMMU group viability: may a VM open this function's group? Only when every member is
unbound or on a driver that leaves DMA to its user (kernel-facts K16)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Optional

from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import is_dma_safe
from vfio_manager.kernel.model import PciFunction, Topology


@dataclass(frozen=True)
class Blocker:
    """A group member whose host driver keeps the group from being opened."""

    address: PciAddress
    driver: str
    is_bridge: bool

    def __str__(self) -> str:
        kind = "bridge " if self.is_bridge else ""
        return f"{kind}{self.address} on {self.driver}"


def group_blockers(
    topology: Topology, function: PciFunction, *, moving: Collection[PciAddress] = ()
) -> tuple[Blocker, ...]:
    """Members of the function's group on a host driver, ignoring those about to move to vfio."""
    return tuple(
        Blocker(m.address, m.driver, m.is_bridge)
        for m in topology.group_members(function)
        if m.address != function.address
        and m.address not in moving
        and m.driver is not None
        and not is_dma_safe(m.driver)
    )


def group_viable(topology: Topology, function: PciFunction) -> Optional[bool]:
    """Whether every *other* member leaves DMA to its user ("would binding it give a usable
    group?"); ``None`` when the function has no IOMMU group."""
    return None if function.iommu_group is None else not group_blockers(topology, function)

"""The one-line host summary above ``status`` (IOMMU on? vfio-pci registered?): three
listings and a stat, apart from :mod:`vfio_manager.host.preflight` so ``status`` starts fast."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vfio_manager.kernel.drivers import VFIO_PCI
from vfio_manager.kernel.sysfs import Sysfs


@dataclass(frozen=True)
class HostSummary:
    iommu_groups: int  # not counting the groups of vfio's no-IOMMU mode
    iommu_units: tuple[str, ...]
    vfio_pci_registered: bool
    noiommu_nodes: tuple[str, ...] = ()  # /dev/vfio/noiommu-N: vfio's unsafe no-IOMMU mode

    @classmethod
    def read(cls, sysfs: Sysfs) -> HostSummary:
        nodes = tuple(sorted(n for n in sysfs.vfio_devs() if n.startswith("noiommu-")))
        fake = {n[len("noiommu-") :] for n in nodes}
        groups = sum(1 for g in sysfs.iommu_group_names() if g not in fake)
        return cls(groups, tuple(sysfs.iommu_units()), sysfs.driver_registered(VFIO_PCI), nodes)

    def line(self) -> str:
        on, noiommu = self.iommu_groups > 0, bool(self.noiommu_nodes)
        if on:
            units = f", {', '.join(self.iommu_units)}" if self.iommu_units else ""
            iommu = f"IOMMU on ({self.iommu_groups} groups{units})"
        else:
            iommu = "IOMMU off (no IOMMU groups)"
        if noiommu:
            iommu += ", no-IOMMU mode on (unusable for VMs)"
        driver = "vfio-pci registered" if self.vfio_pci_registered else "vfio-pci not registered"
        ready = on and self.vfio_pci_registered and not noiommu
        return f"host: {iommu}, {driver}" + ("" if ready else "; see `vfio-manager check`")

    def to_json(self) -> dict[str, Any]:
        return {
            "iommu": self.iommu_groups > 0,
            "iommu_groups": self.iommu_groups,
            "iommu_units": list(self.iommu_units),
            "vfio_pci_registered": self.vfio_pci_registered,
            "noiommu": bool(self.noiommu_nodes),
        }

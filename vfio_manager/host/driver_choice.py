"""Which driver a function should end up on: its vfio driver, or its native host driver
(found like ``modprobe -R``; ``None`` when its module is not loaded, and the function may
stay driverless as the kernel would leave it). On the way back, the journal's origin wins."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

from vfio_manager.host.dynamic_ids import dynamic_ids
from vfio_manager.host.files import HostFiles, normalise
from vfio_manager.host.modalias import AliasTable
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import STAY_UNBOUND, VFIO_PCI, is_vfio_driver
from vfio_manager.kernel.model import PciFunction, Topology
from vfio_manager.kernel.sysfs import Sysfs


@dataclass(frozen=True)
class HostTarget:
    """Where a function returns to on the host (``driver`` ``None``: whatever the kernel
    picks). Unless ``probe_picks``, the plan names ``driver`` in the override for the probe
    and puts ``override`` back after it."""

    driver: Optional[str]
    override: Optional[str] = None
    probe_picks: bool = True


@dataclass
class DriverResolver:
    """The one answer to "vfio driver for F" and "where F returns on the host" (``check`` and
    ``bind`` alike). A module missing from ``driver_modules`` is looked up live in sysfs;
    ``origins``: the journal's driver and override per function, as it was found; ``dynamic``:
    the (vendor, device) pairs a vfio driver claims by a dynamic ID."""

    driver_modules: Mapping[str, Optional[str]]
    aliases: AliasTable
    sysfs: Sysfs
    origins: Mapping[PciAddress, tuple[Optional[str], Optional[str]]] = field(default_factory=dict)
    dynamic: frozenset[tuple[int, int]] = frozenset()

    def __post_init__(self) -> None:
        self._driver_by_module: dict[str, str] = {}
        for driver, module in self.driver_modules.items():
            self._driver_by_module.setdefault(normalise(module or driver), driver)

    @classmethod
    def load(
        cls, topology: Topology, host: HostFiles, sysfs: Sysfs, aliases: Optional[AliasTable] = None
    ) -> DriverResolver:
        """The resolver for a topology just read (``aliases``: a table already loaded)."""
        aliases = aliases if aliases is not None else AliasTable.load(host)
        dynamic = frozenset((d.vendor, d.device) for d in dynamic_ids(topology.functions.values()))
        return cls(topology.driver_modules, aliases, sysfs, dynamic=dynamic)

    def driver_for_module(self, module: str) -> Optional[str]:
        """The registered PCI driver a module provides, ``None`` if it is not loaded."""
        if normalise(module) in self._driver_by_module:
            return self._driver_by_module[normalise(module)]
        registered = self.sysfs.driver_registered
        return next((d for d in self.sysfs.module_pci_drivers(module) if registered(d)), None)

    def alias_driver(self, function: PciFunction) -> Optional[str]:
        """The registered driver modules.alias names for the function (``modprobe -R``)."""
        module = self.aliases.native_module(function.modalias) if function.modalias else None
        return self.driver_for_module(module) if module else None

    def probe_picks(self, function: PciFunction, driver: Optional[str]) -> bool:
        """Whether ``drivers_probe`` without an override is trusted to attach ``driver``."""
        if (function.vendor, function.device) in self.dynamic:
            return False  # a vfio driver claims the ID: it may come first
        return driver is not None and driver == self.alias_driver(function)

    def host_target(self, function: PciFunction) -> HostTarget:
        """Its journal origin while that driver is registered, else modules.alias's driver."""
        if function.address in self.origins:
            driver, override = self.origins[function.address]
            if driver is None:
                return HostTarget(STAY_UNBOUND, override)
            if not is_vfio_driver(driver) and driver in self.driver_modules:
                return HostTarget(driver, override, self.probe_picks(function, driver))
        native = self.alias_driver(function)
        return HostTarget(native, None, self.probe_picks(function, native))

    def variant_module(self, function: PciFunction) -> Optional[str]:
        """The vfio variant module modules.alias names (not vfio-pci's own catch-all alias)."""
        variant = self.aliases.vfio_variant_module(function.modalias) if function.modalias else None
        return None if variant is None or normalise(variant) == "vfio_pci" else normalise(variant)

    def vfio_driver(self, function: PciFunction) -> str:
        """The vfio driver to bind: generic vfio-pci unless a variant is registered for it."""
        variant = self.variant_module(function)
        return (self.driver_for_module(variant) if variant is not None else None) or VFIO_PCI

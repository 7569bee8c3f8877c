"""Which driver a function should end up on: its vfio driver, or its native host driver.

The native driver is found like ``modprobe -R``: the function's modalias against the host's
modules.alias, then the module mapped to the PCI driver it registered (``drivers/NAME/module``).
A native module that is not loaded yields ``None``: the function may stay driverless, which is
what the kernel itself would do. On the way back, the journal's origin of a function (the driver
and override it was found with) comes first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from vfio_manager.host.dynamic_ids import suspected_ids
from vfio_manager.host.files import HostFiles
from vfio_manager.host.modalias import AliasTable
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import STAY_UNBOUND, VFIO_PCI, is_vfio_driver
from vfio_manager.kernel.model import PciFunction, Topology
from vfio_manager.kernel.sysfs import Sysfs

Origins = Mapping[PciAddress, tuple[Optional[str], Optional[str]]]
"""The journal's origins: per function, the driver and ``driver_override`` it was found with."""


def _normalise(module: str) -> str:
    return module.replace("-", "_")


@dataclass(frozen=True)
class HostTarget:
    """Where a function returns to on the host: its driver and its ``driver_override``.

    ``driver`` ``None`` means whatever the kernel picks (no driver included);
    :data:`STAY_UNBOUND` means no driver, as it had none before it was moved. ``probe_picks``
    says whether ``drivers_probe`` with ``override`` is trusted to attach ``driver``: true for
    the driver modules.alias names, unless a vfio driver is seen claiming the function's ID
    through a dynamic ID. When it is false the plan names ``driver`` in the override for the
    probe, and puts ``override`` back after it.
    """

    driver: Optional[str]
    override: Optional[str] = None
    probe_picks: bool = True


class DriverResolver:
    """Answers "vfio driver for F" and "where F returns on the host" from the registered
    drivers, the alias table and, for the way back, the journal's origins: the one answer
    ``check`` and ``bind`` both use.

    ``driver_modules`` maps each registered PCI driver to its module (``None``: built in);
    ``module_drivers`` lists the PCI drivers a module registered (``/sys/module/M/drivers``),
    for built-in modules whose driver has no ``module`` link; ``dynamic`` holds the
    (vendor, device) pairs some vfio driver is seen claiming through a dynamic ID.
    """

    def __init__(
        self,
        driver_modules: Mapping[str, Optional[str]],
        aliases: AliasTable,
        *,
        origins: Optional[Origins] = None,
        module_drivers: Callable[[str], Sequence[str]] = lambda _module: (),
        dynamic: frozenset[tuple[int, int]] = frozenset(),
    ) -> None:
        self.driver_modules = driver_modules
        self.aliases = aliases
        self.origins = origins or {}
        self.module_drivers = module_drivers
        self.dynamic = dynamic
        self._driver_by_module: dict[str, str] = {}
        for driver, module in driver_modules.items():
            self._driver_by_module.setdefault(_normalise(module or driver), driver)

    @classmethod
    def load(cls, topology: Topology, host: HostFiles, sysfs: Sysfs) -> DriverResolver:
        return cls.for_node(
            topology.driver_modules,
            AliasTable.load(host),
            sysfs,
            dynamic=suspected_ids(topology.functions.values()),
        )

    @classmethod
    def for_node(
        cls,
        driver_modules: Mapping[str, Optional[str]],
        aliases: AliasTable,
        sysfs: Sysfs,
        *,
        origins: Optional[Origins] = None,
        dynamic: frozenset[tuple[int, int]] = frozenset(),
    ) -> DriverResolver:
        """A resolver that also asks sysfs, live, which drivers a module registered (a built-in
        one, or one loaded after ``driver_modules`` was read)."""

        def module_drivers(module: str) -> list[str]:
            return [d for d in sysfs.module_pci_drivers(module) if sysfs.driver_registered(d)]

        return cls(
            driver_modules,
            aliases,
            origins=origins,
            module_drivers=module_drivers,
            dynamic=dynamic,
        )

    def with_origins(self, origins: Origins) -> DriverResolver:
        """The same resolver, answering the way back from the journal's ``origins``."""
        return DriverResolver(
            self.driver_modules,
            self.aliases,
            origins=origins,
            module_drivers=self.module_drivers,
            dynamic=self.dynamic,
        )

    def driver_for_module(self, module: str) -> Optional[str]:
        """The registered PCI driver a module provides, ``None`` if it is not loaded."""
        found = self._driver_by_module.get(_normalise(module))
        return found if found is not None else next(iter(self.module_drivers(module)), None)

    def native_module(self, function: PciFunction) -> Optional[str]:
        return self.aliases.native_module(function.modalias) if function.modalias else None

    def alias_driver(self, function: PciFunction) -> Optional[str]:
        """The registered driver modules.alias names for the function (``modprobe -R``)."""
        module = self.native_module(function)
        return self.driver_for_module(module) if module else None

    def probe_picks(self, function: PciFunction, driver: Optional[str]) -> bool:
        """Whether ``drivers_probe`` without an override is trusted to attach ``driver``."""
        if (function.vendor, function.device) in self.dynamic:
            return False  # a vfio driver claims the ID: it may come first
        return driver is not None and driver == self.alias_driver(function)

    def host_target(self, function: PciFunction) -> HostTarget:
        """Where the function returns on the host.

        Its origin in the journal wins (the driver and override it had when it was first
        moved to vfio; no driver: :data:`STAY_UNBOUND`), as long as that driver is
        registered; else the driver modules.alias names, with no override; ``None`` when
        neither is known ("whatever the kernel picks", including no driver).
        """
        if function.address in self.origins:
            driver, override = self.origins[function.address]
            if driver is None:
                return HostTarget(STAY_UNBOUND, override)
            if not is_vfio_driver(driver) and driver in self.driver_modules:
                return HostTarget(driver, override, self.probe_picks(function, driver))
        native = self.alias_driver(function)
        return HostTarget(native, None, self.probe_picks(function, native))

    def variant_module(self, function: PciFunction) -> Optional[str]:
        """The vfio variant module modules.alias names for the function (normalised), not
        counting vfio-pci's own catch-all alias; ``None`` when there is none."""
        if not function.modalias:
            return None
        variant = self.aliases.vfio_variant_module(function.modalias)
        if variant is None or _normalise(variant) == "vfio_pci":
            return None
        return _normalise(variant)

    def vfio_driver(self, function: PciFunction) -> str:
        """The vfio driver to bind: generic vfio-pci unless a variant is registered for it."""
        variant = self.variant_module(function)
        driver = self.driver_for_module(variant) if variant is not None else None
        return driver if driver is not None else VFIO_PCI

"""Which driver a function should end up on: its vfio driver, or its native host driver.

The native driver is found like ``modprobe -R``: the function's modalias against the host's
modules.alias, then the module mapped to the PCI driver it registered (``drivers/NAME/module``).
A native module that is not loaded yields ``None``: the function may stay driverless, which is
what the kernel itself would do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Optional

from vfio_manager.host.files import HostFiles
from vfio_manager.host.modalias import AliasTable
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import STAY_UNBOUND, VFIO_PCI, is_vfio_driver
from vfio_manager.kernel.model import PciFunction, Topology
from vfio_manager.kernel.sysfs import Sysfs


def _normalise(module: str) -> str:
    return module.replace("-", "_")


class DriverResolver:
    """Answers "vfio driver for F" and "native driver for F" from the registered drivers and
    the alias table: the one answer ``check`` and ``bind`` both use.

    ``driver_modules`` maps each registered PCI driver to its module (``None``: built in);
    ``module_drivers`` lists the PCI drivers a module registered (``/sys/module/M/drivers``),
    for built-in modules whose driver has no ``module`` link.
    """

    def __init__(
        self,
        driver_modules: Mapping[str, Optional[str]],
        aliases: AliasTable,
        *,
        recorded_native: Optional[Mapping[PciAddress, Optional[str]]] = None,
        module_drivers: Callable[[str], Sequence[str]] = lambda _module: (),
    ) -> None:
        self.driver_modules = driver_modules
        self.aliases = aliases
        self.recorded_native = recorded_native or {}
        self.module_drivers = module_drivers
        self._driver_by_module: dict[str, str] = {}
        for driver, module in driver_modules.items():
            self._driver_by_module.setdefault(_normalise(module or driver), driver)

    @classmethod
    def load(cls, topology: Topology, host: HostFiles, sysfs: Sysfs) -> DriverResolver:
        return cls.for_node(topology.driver_modules, AliasTable.load(host), sysfs)

    @classmethod
    def for_node(
        cls,
        driver_modules: Mapping[str, Optional[str]],
        aliases: AliasTable,
        sysfs: Sysfs,
        *,
        recorded_native: Optional[Mapping[PciAddress, Optional[str]]] = None,
    ) -> DriverResolver:
        """A resolver that also asks sysfs, live, which drivers a module registered (a built-in
        one, or one loaded after ``driver_modules`` was read)."""

        def module_drivers(module: str) -> list[str]:
            return [d for d in sysfs.module_pci_drivers(module) if sysfs.driver_registered(d)]

        return cls(
            driver_modules, aliases, recorded_native=recorded_native, module_drivers=module_drivers
        )

    def driver_for_module(self, module: str) -> Optional[str]:
        """The registered PCI driver a module provides, ``None`` if it is not loaded."""
        found = self._driver_by_module.get(_normalise(module))
        return found if found is not None else next(iter(self.module_drivers(module)), None)

    def native_module(self, function: PciFunction) -> Optional[str]:
        return self.aliases.native_module(function.modalias) if function.modalias else None

    def native_driver(self, function: PciFunction) -> Optional[str]:
        """The host driver the function belongs on.

        The journal's record of the driver it had before its first move to vfio wins (none
        recorded: :data:`STAY_UNBOUND`); else modules.alias; ``None`` means "whatever the
        kernel picks", including no driver.
        """
        if function.address in self.recorded_native:
            recorded = self.recorded_native[function.address]
            if recorded is None:
                return STAY_UNBOUND
            if not is_vfio_driver(recorded) and recorded in self.driver_modules:
                return recorded
        module = self.native_module(function)
        return self.driver_for_module(module) if module else None

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

"""Which driver a function should end up on: its vfio driver, or its native host driver.

The native driver is found like ``modprobe -R``: the function's modalias against the host's
modules.alias, then the module mapped to the PCI driver it registered (``drivers/NAME/module``).
A native module that is not loaded yields ``None``: the function may stay driverless, which is
what the kernel itself would do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

from vfio_manager.host.files import HostFiles
from vfio_manager.host.modalias import AliasTable
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import STAY_UNBOUND, VFIO_PCI, is_vfio_driver
from vfio_manager.kernel.model import PciFunction, Topology


def _normalise(module: str) -> str:
    return module.replace("-", "_")


class DriverResolver:
    """Answers "vfio driver for F" and "native driver for F" from one topology and alias table."""

    def __init__(
        self,
        topology: Topology,
        aliases: AliasTable,
        *,
        recorded_native: Optional[Mapping[PciAddress, Optional[str]]] = None,
    ) -> None:
        self.topology = topology
        self.aliases = aliases
        self.recorded_native = recorded_native or {}
        self._driver_by_module: dict[str, str] = {}
        for driver, module in topology.driver_modules.items():
            self._driver_by_module.setdefault(_normalise(module or driver), driver)

    @classmethod
    def load(cls, topology: Topology, host: HostFiles) -> DriverResolver:
        return cls(topology, AliasTable.load(host))

    def driver_for_module(self, module: str) -> Optional[str]:
        """The registered PCI driver a module provides, ``None`` if it is not loaded."""
        return self._driver_by_module.get(_normalise(module))

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
            if not is_vfio_driver(recorded) and recorded in self.topology.driver_modules:
                return recorded
        module = self.native_module(function)
        return self.driver_for_module(module) if module else None

    def vfio_driver(self, function: PciFunction) -> str:
        """The vfio driver to bind: generic vfio-pci unless a variant is registered for it."""
        if function.modalias:
            variant = self.aliases.vfio_variant_module(function.modalias)
            if variant:
                driver = self.driver_for_module(variant)
                if driver is not None:
                    return driver
        return VFIO_PCI

"""Turns a selection and the BDFs a user named into the functions a command may touch.

Every named BDF is checked before anything is written: one that does not exist or that the
selection excludes refuses the whole command, so a typo never moves the wrong function.
"""

from __future__ import annotations

from collections.abc import Sequence

from vfio_manager.errors import DeviceNotFoundError, NotSelectedError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.model import PciFunction, Topology
from vfio_manager.pipeline.selection import Selector


def selected_functions(topology: Topology, selector: Selector) -> list[PciFunction]:
    """All functions the selection matches, in address order."""
    return [f for a, f in sorted(topology.functions.items()) if selector.matches(f)]


def named_functions(
    topology: Topology, selector: Selector, named: Sequence[PciAddress]
) -> list[PciFunction]:
    """The named functions, after checking each exists and is selected (duplicates dropped)."""
    result: list[PciFunction] = []
    for address in dict.fromkeys(named):
        function = topology.get(address)
        if function is None:
            raise DeviceNotFoundError(
                f"no PCI function {address} on this host",
                bdf=str(address),
                remedy="list the functions with `vfio-manager status` or `lspci -D`",
            )
        if not selector.matches(function):
            raise NotSelectedError(
                f"{address} ({function.vendor:04x}:{function.device:04x}, class "
                f"0x{function.pci_class:06x}) is not selected by {selector.describe()}; "
                "refusing to touch it",
                bdf=str(address),
                remedy="pass --vendor/--class/--device-id options that match it if you really "
                "mean this function",
            )
        result.append(function)
    return result

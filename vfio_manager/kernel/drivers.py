"""The driver vocabulary, in one place: which names mean "vfio", "leaves DMA to its user",
"stay unbound", and the two directions a function moves in.

Every layer speaks these words (the plan, the journal, the checks, the status view), so they
live at the bottom, beside the kernel's view, and nothing else defines them.
"""

from __future__ import annotations

import enum
from typing import Optional

VFIO_PCI = "vfio-pci"
"""The generic vfio driver; variants (``mlx5_vfio_pci``, ...) end in ``vfio_pci``."""

# Drivers other than the vfio family that leave DMA to the group's user (driver_managed_dma).
# The flag is not in sysfs, so this list is the only source.
_DMA_SAFE_HOST_DRIVERS = frozenset({"pci-stub", "pcieport"})

STAY_UNBOUND = ""
"""Target of a return to the host for a function that had no driver before it was moved to
vfio: it is unbound from vfio and not probed, so it stays driverless."""


class Direction(str, enum.Enum):
    """Where a transition takes a function."""

    TO_VFIO = "vfio"
    TO_HOST = "host"


def is_vfio_driver(driver: Optional[str]) -> bool:
    """vfio-pci and its variants (``mlx5_vfio_pci``, ``nvgrace_gpu_vfio_pci``, ...)."""
    return driver is not None and (driver == VFIO_PCI or driver.endswith(("vfio_pci", "vfio-pci")))


def is_dma_safe(driver: Optional[str]) -> bool:
    """True when ``driver`` on a group member keeps the group viable."""
    return driver is None or is_vfio_driver(driver) or driver in _DMA_SAFE_HOST_DRIVERS

"""The driver vocabulary every layer speaks: "vfio", "leaves DMA to its user", "stay
unbound", and the two directions a function moves in."""

from __future__ import annotations

import enum
from typing import Optional

VFIO_PCI = "vfio-pci"
"""The generic vfio driver; variants (``mlx5_vfio_pci``, ...) end in ``vfio_pci``."""

# Host drivers that leave DMA to the group's user (driver_managed_dma; not shown in sysfs).
_DMA_SAFE_HOST_DRIVERS = frozenset({"pci-stub", "pcieport"})

STAY_UNBOUND = ""
"""Host target of a function that had no driver before vfio: unbound and not probed."""


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

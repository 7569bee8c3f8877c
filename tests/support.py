"""Helpers for the fault, crash and concurrency tests of the safety tier."""

from __future__ import annotations

from typing import Optional

from tests.harness import FakeKernel

State = tuple[Optional[str], Optional[str]]  # (driver, driver_override)

HOST: State = ("rebellions", None)
VFIO: State = ("vfio-pci", "vfio-pci")


def state(kernel: FakeKernel, bdf: str) -> State:
    return kernel.driver_of(bdf), kernel.override_of(bdf)


def states(kernel: FakeKernel, bdfs: list[str]) -> dict[str, State]:
    return {bdf: state(kernel, bdf) for bdf in bdfs if kernel.has_function(bdf)}


def named_bdf(path: str, data: str) -> Optional[str]:
    """The function a write is about: from a device attribute's path or a driver file's data."""
    parts = path.split("/")
    if parts[:3] == ["bus", "pci", "devices"] and len(parts) == 5:
        return parts[3]
    if path == "bus/pci/drivers_probe" or (
        parts[:3] == ["bus", "pci", "drivers"]
        and len(parts) == 5
        and parts[4] in ("bind", "unbind")
    ):
        return data.strip()
    return None  # any other file: never written by the tool

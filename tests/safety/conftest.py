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

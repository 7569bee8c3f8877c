"""Which rule handles a write to which kernel file: the index of the fake kernel.

One table per folder, file name -> store function; each rule module cites its facts in
docs/kernel-facts.md. A write reaches :func:`dispatch` through writes.py (fault plan first,
Write log after) with the file's canonical path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from tests.harness.kernel import (
    bind_unbind,
    driver_override,
    drivers_probe,
    new_id,
    remove_rescan,
    sriov,
)
from tests.harness.kernel.state import KernelState

Rule = Callable[[KernelState, str, bytes], None]  # (state, BDF or driver name, data)
BusRule = Callable[[KernelState, bytes], None]

# bus/pci/devices/BDF/FILE
DEVICE_FILES: dict[str, Rule] = {
    "driver_override": driver_override.store,  # K3
    "sriov_numvfs": sriov.numvfs_store,  # K17
    "sriov_drivers_autoprobe": sriov.autoprobe_store,  # K17
    "remove": remove_rescan.remove,  # K18
    "reset": remove_rescan.reset,  # K18
    "rescan": remove_rescan.accept,  # K18
    "uevent": remove_rescan.accept,
}

# bus/pci/drivers/NAME/FILE
DRIVER_FILES: dict[str, Rule] = {
    "bind": bind_unbind.bind,  # K4
    "unbind": bind_unbind.unbind,  # K5
    "new_id": new_id.add,  # K7
    "remove_id": new_id.remove,  # K7
    "uevent": remove_rescan.accept,
}


def _accept(_s: KernelState, _data: bytes) -> None:
    """A bus file that accepts any write and changes nothing (rescan: K18, uevent, ...)."""


# bus/pci/FILE
BUS_FILES: dict[str, BusRule] = {
    "drivers_probe": drivers_probe.probe,  # K6
    "drivers_autoprobe": drivers_probe.autoprobe_store,  # K6
    "rescan": _accept,  # K18
    "resource_alignment": _accept,
    "uevent": _accept,
}


def rule_for(rel: str) -> Optional[BusRule]:
    """The rule of the kernel file ``rel`` (canonical, relative to sys_root), bound to its
    BDF or driver name; ``None`` for a file no rule handles."""
    parts = rel.split("/")
    if parts[:2] != ["bus", "pci"]:
        return None
    if len(parts) == 3:
        return BUS_FILES.get(parts[2])
    table = {"devices": DEVICE_FILES, "drivers": DRIVER_FILES}.get(parts[2])
    if len(parts) != 5 or table is None or parts[4] not in table:
        return None
    rule, name = table[parts[4]], parts[3]
    return lambda s, data: rule(s, name, data)


def dispatch(s: KernelState, rel: str, data: bytes) -> None:
    """Run the rule of the kernel file ``rel`` on ``data``."""
    rule = rule_for(rel)
    if rule is None:
        raise LookupError(f"no kernel rule for {rel}")
    rule(s, data)

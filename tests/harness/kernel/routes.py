"""Which rule handles a write to which kernel file: the index of the fake kernel.

One table per folder, file name -> store function; each rule module cites its facts in
docs/kernel-facts.md. A write reaches :func:`dispatch` through writes.py (fault plan first,
Write log after) with the file's canonical path.
"""

from __future__ import annotations

from collections.abc import Callable

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


def dispatch(s: KernelState, rel: str, data: bytes) -> None:
    """Run the rule of the kernel file ``rel`` (canonical, relative to sys_root)."""
    parts = rel.split("/")
    if parts[:2] == ["bus", "pci"]:
        if len(parts) == 3 and parts[2] in BUS_FILES:
            BUS_FILES[parts[2]](s, data)
            return
        if len(parts) == 5 and parts[2] == "devices" and parts[4] in DEVICE_FILES:
            DEVICE_FILES[parts[4]](s, parts[3], data)
            return
        if len(parts) == 5 and parts[2] == "drivers" and parts[4] in DRIVER_FILES:
            DRIVER_FILES[parts[4]](s, parts[3], data)
            return
    raise LookupError(f"no kernel rule for {rel}")

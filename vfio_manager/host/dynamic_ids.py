"""Dynamic IDs on vfio drivers: the evidence that one is there, and how to remove it.

``echo VENDOR DEVICE > /sys/bus/pci/drivers/vfio-pci/new_id`` (the method of the scripts
this tool replaces, and of ``vfio-pci.ids=``) makes vfio-pci claim every function with that
ID, without any ``driver_override``. It outlives those scripts: when the native driver was
registered after vfio-pci, ``drivers_probe`` hands a function on its way back to the host to
vfio-pci again. The kernel keeps no readable list of dynamic IDs (``new_id`` is write-only),
so the evidence is indirect: vfio-pci matches nothing by its own table (its entries are
override-only), so a function bound to a vfio driver that its ``driver_override`` does not
name was bound through a dynamic ID (or by a return to the host that stopped between
clearing the override and the unbind).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vfio_manager.kernel.drivers import is_vfio_driver
from vfio_manager.kernel.model import PciFunction


@dataclass(frozen=True)
class DynamicId:
    """A function that a vfio driver holds through a dynamic ID, with the way to remove it."""

    bdf: str
    driver: str
    vendor: int
    device: int

    @property
    def ids(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"

    @property
    def message(self) -> str:
        return (
            f"{self.bdf} is on {self.driver} without driver_override={self.driver}: "
            f"{self.driver} has a dynamic ID for {self.ids} (new_id or {self.driver}.ids=), "
            "so drivers_probe may hand it back to vfio on its way to the host"
        )

    @property
    def remedy(self) -> str:
        return remove_id_remedy(self.driver, self.vendor, self.device)

    def to_json(self) -> dict[str, Any]:
        return {"bdf": self.bdf, "message": self.message, "remedy": self.remedy}


def remove_id_remedy(driver: str, vendor: int, device: int) -> str:
    """The command that removes a dynamic ID (it does not unbind anything)."""
    return f"echo {vendor:04x} {device:04x} > /sys/bus/pci/drivers/{driver}/remove_id"


def held_by_dynamic_id(function: PciFunction) -> bool:
    """True when a vfio driver holds ``function`` and its override does not name that driver."""
    return is_vfio_driver(function.driver) and function.driver_override != function.driver


def dynamic_ids(functions: Iterable[PciFunction]) -> list[DynamicId]:
    """Every function among ``functions`` that a vfio driver holds through a dynamic ID."""
    return [
        DynamicId(f.bdf, f.driver or "", f.vendor, f.device)
        for f in functions
        if held_by_dynamic_id(f)
    ]


def _listed(value: str, wanted: Collection[str]) -> list[str]:
    """The ``vvvv:dddd`` of ``wanted`` that an ``ids=`` value (``1eff:1220,8086:10d3:...``)
    lists; entries are vendor:device[:subvendor:subdevice[:class[:mask]]] in hex."""
    found = []
    for item in value.split(","):
        parts = item.strip().lower().split(":")
        if len(parts) >= 2:
            ids = f"{parts[0].rjust(4, '0')}:{parts[1].rjust(4, '0')}"
            if ids in wanted and ids not in found:
                found.append(ids)
    return found


def configured_ids(
    cmdline_args: Mapping[str, Sequence[str]],
    modprobe_lines: Iterable[tuple[str, int, str]],
    wanted: Collection[str],
) -> list[str]:
    """Where the boot configuration gives vfio-pci a dynamic ID of ``wanted`` (``vvvv:dddd``):
    ``vfio-pci.ids=`` on the kernel command line, ``options vfio-pci ids=`` in modprobe.d.
    These come back at every boot (or load of vfio-pci) after a ``remove_id``."""
    evidence = []
    for key in ("vfio_pci.ids",):
        for value in cmdline_args.get(key, ()):
            for ids in _listed(value, wanted):
                evidence.append(f"vfio-pci.ids={value} on the kernel command line lists {ids}")
    for path, number, line in modprobe_lines:
        words = line.split()
        if len(words) < 3 or words[0] != "options" or words[1].replace("-", "_") != "vfio_pci":
            continue
        for word in words[2:]:
            if word.startswith("ids="):
                for ids in _listed(word[len("ids=") :], wanted):
                    evidence.append(f"{path}:{number}: {line} (lists {ids})")
    return evidence


def suspected_ids(functions: Iterable[PciFunction]) -> frozenset[tuple[int, int]]:
    """The (vendor, device) pairs some vfio driver is seen claiming through a dynamic ID."""
    return frozenset((d.vendor, d.device) for d in dynamic_ids(functions))


__all__ = [
    "DynamicId",
    "configured_ids",
    "dynamic_ids",
    "held_by_dynamic_id",
    "remove_id_remedy",
    "suspected_ids",
]

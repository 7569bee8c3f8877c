"""Dynamic IDs on vfio drivers (``new_id``, ``vfio-pci.ids=``), which make ``drivers_probe``
hand a function back to vfio (kernel-facts K7). ``new_id`` is write-only, and vfio drivers bind
only when named (K10): one holding a function its override does not name holds it by an ID."""

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
    def message(self) -> str:
        ids = f"{self.vendor:04x}:{self.device:04x}"
        return (
            f"{self.bdf} is on {self.driver} without driver_override={self.driver}: "
            f"{self.driver} has a dynamic ID for {ids} (new_id or {self.driver}.ids=), "
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


def dynamic_ids(functions: Iterable[PciFunction]) -> list[DynamicId]:
    """The functions a vfio driver holds without their override naming it."""
    return [
        DynamicId(f.bdf, f.driver or "", f.vendor, f.device)
        for f in functions
        if is_vfio_driver(f.driver) and f.driver_override != f.driver
    ]


def _listed(value: str, wanted: Collection[str]) -> list[str]:
    """The ``vvvv:dddd`` of ``wanted`` an ``ids=`` value lists (``1eff:1220,8086:10d3:...``)."""
    listed = (item.strip().lower().split(":") for item in value.split(","))
    ids = (f"{p[0].rjust(4, '0')}:{p[1].rjust(4, '0')}" for p in listed if len(p) >= 2)
    return [i for i in dict.fromkeys(ids) if i in wanted]


def configured_ids(
    cmdline_args: Mapping[str, Sequence[str]],
    modprobe_lines: Iterable[tuple[str, int, str]],
    wanted: Collection[str],
) -> list[str]:
    """Where the boot configuration (command line, modprobe.d) gives vfio-pci an ID of
    ``wanted``: it comes back at every boot, or load of vfio-pci, after a ``remove_id``."""
    evidence = [
        f"vfio-pci.ids={value} on the kernel command line lists {ids}"
        for value in cmdline_args.get("vfio_pci.ids", ())
        for ids in _listed(value, wanted)
    ]
    for path, number, line in modprobe_lines:
        words = line.split()
        if len(words) >= 3 and words[0] == "options" and words[1].replace("-", "_") == "vfio_pci":
            values = [word[len("ids=") :] for word in words[2:] if word.startswith("ids=")]
            found = [ids for value in values for ids in _listed(value, wanted)]
            evidence += [f"{path}:{number}: {line} (lists {ids})" for ids in found]
    return evidence

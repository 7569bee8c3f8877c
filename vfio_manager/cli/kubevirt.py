"""KubeVirt's ``permittedHostDevices.pciHostDevices`` entries for Rebellions functions, each
naming the resource the RBLN operator's sandbox device plugin advertises, letter for letter
(a mismatch leaves the VM pending): per card (``atom``) or per product and kind (``pf``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from vfio_manager.kernel.catalogue import REBELLIONS_VENDOR, catalogue_entries, catalogue_entry
from vfio_manager.kernel.model import PciFunction

if TYPE_CHECKING:
    from vfio_manager.pipeline.selection import Selector

RESOURCE_PREFIX = "rebellions.ai"
NAMINGS = ("atom", "pf")
FORMATS = ("yaml", "json")


@dataclass(frozen=True)
class PciHostDevice:
    """One ``pciHostDevices`` entry, and whether the catalogue knows its device ID."""

    vendor: int
    device: int
    resource_name: str
    catalogued: bool

    @property
    def pci_vendor_selector(self) -> str:
        return f"{self.vendor:04X}:{self.device:04X}"

    def to_kubevirt(self) -> dict[str, Any]:
        """The entry exactly as the KubeVirt CR takes it."""
        return {
            "pciVendorSelector": self.pci_vendor_selector,
            "resourceName": self.resource_name,
            "externalResourceProvider": True,
        }


def resource_name(device: int, naming: str, *, is_vf: bool = False) -> str:
    """The name the sandbox device plugin advertises for a Rebellions device ID; ``is_vf``
    tells the kind of an ID the catalogue does not know."""
    if naming not in NAMINGS:
        raise ValueError(f"naming must be one of {', '.join(NAMINGS)}, not {naming!r}")
    known = catalogue_entry(device)
    if naming == "atom" and known is not None:
        return f"{RESOURCE_PREFIX}/{known.family}_{known.product.removeprefix('RBLN-')}_PT"
    if naming == "atom":
        return f"{RESOURCE_PREFIX}/RBLN_{device:04X}_PT"
    if known is None:
        return f"{RESOURCE_PREFIX}/RBLN-{device:04X}_{'VF' if is_vf else 'PF'}"
    return f"{RESOURCE_PREFIX}/{known.product}_{known.kind}"


def _entry(device: int, naming: str, *, is_vf: bool) -> PciHostDevice:
    name = resource_name(device, naming, is_vf=is_vf)
    return PciHostDevice(REBELLIONS_VENDOR, device, name, catalogue_entry(device) is not None)


def for_functions(
    functions: Iterable[PciFunction], naming: str, selector: Optional[Selector] = None
) -> list[PciHostDevice]:
    """One entry per Rebellions device ID among ``functions`` (no plugin names others), by ID,
    and the VFs' ID of a PF ``selector`` asks to carry VFs (before they exist)."""
    rebellions = [f for f in functions if f.vendor == REBELLIONS_VENDOR]
    is_vf = {f.device: f.physfn is not None for f in reversed(rebellions)}  # the first one's kind
    carrying = [pf for pf in rebellions if selector is not None and selector.vf_count(pf)]
    for pf in carrying:
        if pf.sriov_vf_device is not None:
            is_vf.setdefault(pf.sriov_vf_device, True)
    return [_entry(device, naming, is_vf=is_vf[device]) for device in sorted(is_vf)]


def for_catalogue(naming: str) -> list[PciHostDevice]:
    """One entry per catalogued device ID (every product's PF and VF), by ID."""
    return [_entry(e.device, naming, is_vf=e.kind == "VF") for e in catalogue_entries()]


def document(entries: Sequence[PciHostDevice]) -> dict[str, Any]:
    """What goes under the CR's ``spec.configuration``."""
    return {"permittedHostDevices": {"pciHostDevices": [e.to_kubevirt() for e in entries]}}


def uncatalogued_note(entry: PciHostDevice) -> str:
    """Why an entry's name may not match anything the device plugin advertises."""
    return (
        f"{entry.pci_vendor_selector} is not a catalogued product: its name "
        f"{entry.resource_name} is made from its ID; the device plugin advertises it only "
        "if its resource list names it so"
    )


def _yaml_lines(entries: Sequence[PciHostDevice], naming: str) -> list[str]:
    lines = [
        f"# spec.configuration of the KubeVirt CR (vfio-manager kubevirt-config, naming {naming}).",
        "# A merge patch replaces the whole list: keep the entries you already have.",
        "permittedHostDevices:",
    ]
    if not entries:
        return [*lines, "  pciHostDevices: []"]
    lines.append("  pciHostDevices:")
    for entry in entries:
        if not entry.catalogued:
            lines.append(f"  # {uncatalogued_note(entry)}")
        lines += [  # JSON string literals are YAML double-quoted scalars (ASCII here)
            f"  - pciVendorSelector: {json.dumps(entry.pci_vendor_selector)}",
            f"    resourceName: {json.dumps(entry.resource_name)}",
            "    externalResourceProvider: true",
        ]
    return lines


def render(entries: Sequence[PciHostDevice], output_format: str, *, naming: str) -> str:
    """The document as YAML (with comments) or JSON, ending in a newline."""
    if output_format == "json":
        return json.dumps(document(entries), indent=2) + "\n"
    if output_format == "yaml":
        return "\n".join(_yaml_lines(entries, naming)) + "\n"
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {output_format!r}")

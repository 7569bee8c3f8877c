"""Rebellions product names by PCI device ID (PF and SR-IOV VF IDs); unknown IDs are named
by number, never rejected."""

from __future__ import annotations

from typing import NamedTuple, Optional

REBELLIONS_VENDOR = 0x1EFF
PROCESSING_ACCELERATOR_CLASS = 0x120000


class CatalogueEntry(NamedTuple):
    """One catalogued device ID: ``(0x1221, "RBLN-CA22", "ATOM", "VF")``."""

    device: int
    product: str
    family: str
    kind: str  # "PF" or "VF"


_PRODUCTS: dict[int, CatalogueEntry] = {}
for _product, _family, _pf, _vf in (
    ("RBLN-CA02", "ATOM", 0x1020, 0x1021),
    ("RBLN-CA11", "ATOM", 0x1110, 0x1111),
    ("RBLN-CA12", "ATOM", 0x1120, 0x1121),
    ("RBLN-CA15", "ATOM", 0x1150, None),
    ("RBLN-CA21", "ATOM", 0x1210, 0x1211),
    ("RBLN-CA22", "ATOM", 0x1220, 0x1221),
    ("RBLN-CA25", "ATOM", 0x1250, 0x1251),
    ("RBLN-CR03", "REBEL", 0x2030, 0x2031),
    ("RBLN-CR13", "REBEL", 0x2130, 0x2131),
):
    _PRODUCTS[_pf] = CatalogueEntry(_pf, _product, _family, "PF")
    if _vf is not None:
        _PRODUCTS[_vf] = CatalogueEntry(_vf, _product, _family, "VF")


def product_name(vendor: int, device: int) -> Optional[str]:
    """``RBLN-CA22``, ``RBLN-CA22 VF``, ``Rebellions 1fff`` when unknown; ``None`` for other
    vendors (they are shown by ID)."""
    if vendor != REBELLIONS_VENDOR:
        return None
    known = _PRODUCTS.get(device)
    if known is None:
        return f"Rebellions {device:04x}"
    return known.product if known.kind == "PF" else f"{known.product} VF"


def catalogue_entry(device: int) -> Optional[CatalogueEntry]:
    """The catalogue's knowledge of one Rebellions device ID; ``None`` when not catalogued."""
    return _PRODUCTS.get(device)


def catalogue_entries() -> tuple[CatalogueEntry, ...]:
    return tuple(_PRODUCTS[device] for device in sorted(_PRODUCTS))

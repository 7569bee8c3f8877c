"""Which functions the tool may touch, by the same rules for every command: vendor, class,
device IDs (by default the Rebellions NPUs), products, BDFs, NUMA nodes, a count per NUMA
node, exclusions, VFs per SR-IOV PF; a named BDF that does not exist or is not selected
refuses the command."""

from __future__ import annotations

import collections
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from vfio_manager.errors import DeviceNotFoundError, NotSelectedError, UsageError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.catalogue import (
    PROCESSING_ACCELERATOR_CLASS,
    REBELLIONS_VENDOR,
    catalogue_entries,
    catalogue_entry,
)
from vfio_manager.kernel.model import PciFunction, Topology


def parse_id(text: str, *, what: str, bits: int, example: str = "0x1eff") -> int:
    """Parse ``0x1eff`` / ``1eff`` (hex always, as lspci prints); raise :class:`UsageError`."""
    raw = text.strip().lower().removeprefix("0x")
    ascii_hex = bool(raw) and set(raw) <= set("0123456789abcdef")  # int() takes more
    if not ascii_hex or int(raw, 16) >= 1 << bits:
        raise UsageError(
            f"{text!r} is not a valid {what}",
            remedy=f"give a hexadecimal {what} of at most {bits // 4} digits, e.g. {example}",
        )
    return int(raw, 16)


def parse_product(text: str) -> str:
    """A product as :func:`product_label` spells it (``RBLN-CA25``, ``RBLN-CA25-VF``, or IDs
    ``1eff-1fff``), any case; the lower-case label, or :class:`UsageError`."""
    label = text.strip().lower()
    known = {e.product.lower() + ("" if e.kind == "PF" else "-vf") for e in catalogue_entries()}
    ids = label.split("-")
    if label in known or (len(ids) == 2 and all(len(i) == 4 for i in ids) and _hex(label)):
        return label
    names = sorted({e.product for e in catalogue_entries()})
    raise UsageError(
        f"{text!r} is not a product",
        remedy=f"give one of {', '.join(names)} (add -VF for a virtual function) or the "
        "vendor and device IDs as 1eff-1250",
    )


def _hex(text: str) -> bool:
    return set(text) <= set("0123456789abcdef-")


def parse_numa_node(text: str) -> int:
    """A NUMA node as sysfs shows it: 0, 1, ... or -1 (none)."""
    value = text.strip()
    if not value.lstrip("-").isdigit() or int(value) < -1:
        raise UsageError(f"{text!r} is not a NUMA node", remedy="give 0, 1, ... (-1: none)")
    return int(value)


def parse_vfs(text: str) -> tuple[str, int]:
    """``N`` (every selected SR-IOV PF) or ``PRODUCT=N`` (:func:`parse_product`'s label): the
    product ("" for every PF) and its count of VFs."""
    product, sep, count = text.strip().rpartition("=")
    try:
        value = parse_count(count)
        if value < 1:  # a PF without VFs is the default, not a count to ask for
            raise UsageError(count)
    except UsageError:
        raise UsageError(
            f"{text!r} is not a count of VFs",
            remedy="give N (every selected SR-IOV PF) or PRODUCT=N, e.g. 4 or RBLN-CA25=4",
        ) from None
    label = parse_product(product) if sep else ""
    if label.endswith("-vf"):
        raise UsageError(
            f"{text!r} names a VF's product", remedy=f"give the PF's: {product[:-3]}={value}"
        )
    return label, value


def parse_count(text: str) -> int:
    """A count of functions: 0 selects none (a node's configuration returning all it has)."""
    value = text.strip()
    if not (value.isascii() and value.isdigit()):
        raise UsageError(f"{text!r} is not a count", remedy="give 0, 1, 2, ...")
    return int(value)


@dataclass(frozen=True)
class Selector:
    """Which functions the tool may touch. Per function: vendor, class and device IDs
    (``None`` or empty: any; a class of 4 hex digits, ``0x1200``, matches any programming
    interface, one of 6 must match exactly), products, BDFs, NUMA nodes; then over the
    node: the first ``per_numa_node`` of each NUMA node in BDF order; then less ``exclude``."""

    vendor: Optional[int] = REBELLIONS_VENDOR
    pci_class: Optional[int] = PROCESSING_ACCELERATOR_CLASS
    device_ids: frozenset[int] = field(default_factory=frozenset)
    class_bits: int = 24
    products: frozenset[str] = frozenset()  # parse_product's lower-case labels
    bdfs: frozenset[PciAddress] = frozenset()
    numa_nodes: frozenset[int] = frozenset()
    per_numa_node: Optional[int] = None
    exclude: frozenset[PciAddress] = frozenset()
    vfs: frozenset[tuple[str, int]] = frozenset()  # parse_vfs's (product or "", count)

    def vf_count(self, function: PciFunction) -> Optional[int]:
        """The VFs a PF is to carry on vfio-pci (its product's count, else the one for every
        PF); ``None``: none asked, or it cannot do SR-IOV."""
        if not function.can_sriov:
            return None
        counts = dict(self.vfs)
        label = product_label(function).lower()
        ids = f"{function.vendor:04x}-{function.device:04x}"
        return counts.get(label, counts.get(ids, counts.get("")))

    def matches(self, function: PciFunction) -> bool:
        """The per-function rules (not the count per NUMA node, not ``exclude``)."""
        if self.numa_nodes and _numa(function) not in self.numa_nodes:
            return False
        return self.may_match(function)

    def may_match(self, function: PciFunction) -> bool:
        """The rules a function's IDs and address decide: a prefilter for reading sysfs."""
        if self.vendor is not None and function.vendor != self.vendor:
            return False
        if self.pci_class is not None:
            actual = function.pci_class >> 8 if self.class_bits == 16 else function.pci_class
            if actual != self.pci_class:
                return False
        ids = f"{function.vendor:04x}-{function.device:04x}"
        if self.products and not {product_label(function).lower(), ids} & self.products:
            return False
        if self.bdfs and function.address not in self.bdfs:
            return False
        return not self.device_ids or function.device in self.device_ids

    def describe(self) -> str:
        parts = []
        if self.vendor is not None:
            parts.append(f"vendor 0x{self.vendor:04x}")
        if self.pci_class is not None:
            width = 4 if self.class_bits == 16 else 6
            parts.append(f"class 0x{self.pci_class:0{width}x}")
        if self.device_ids:
            parts.append("device " + "/".join(f"0x{d:04x}" for d in sorted(self.device_ids)))
        if self.products:
            parts.append("product " + "/".join(p.upper() for p in sorted(self.products)))
        if self.bdfs:
            parts.append("bdf " + "/".join(str(a) for a in sorted(self.bdfs)))
        if self.numa_nodes:
            parts.append("NUMA node " + "/".join(str(n) for n in sorted(self.numa_nodes)))
        if self.per_numa_node is not None:
            parts.append(f"{self.per_numa_node} per NUMA node")
        for product, count in sorted(self.vfs):
            parts.append(f"{count} VFs per {product.upper() or 'SR-IOV'} PF")
        if self.exclude:
            parts.append("excluding " + "/".join(str(a) for a in sorted(self.exclude)))
        return ", ".join(parts) or "any function"

    @classmethod
    def from_options(
        cls,
        vendor: str,
        pci_class: str,
        device_ids: Sequence[str],
        **rules: Any,
    ) -> Selector:
        """From the option values; ``rules`` are the other fields, parsed already."""
        width = len(pci_class.strip().lower().removeprefix("0x"))
        if width not in (4, 6):  # "0x12" is no class: 0x1200? 0x120000? 0x0012? Ask.
            raise UsageError(
                f"{pci_class!r} is not a PCI class: it has {width} hex digits, not 4 or 6",
                remedy="give 4 hex digits for base class and subclass (0x1200, any "
                "programming interface) or 6 to match it too (0x120000), as lspci -n prints",
            )
        example = "0x1200" if width == 4 else "0x120000"
        return cls(
            vendor=parse_id(vendor, what="vendor ID", bits=16),
            pci_class=parse_id(pci_class, what="class", bits=width * 4, example=example),
            device_ids=frozenset(parse_id(d, what="device ID", bits=16) for d in device_ids),
            class_bits=width * 4,
            **rules,
        )


def _numa(function: PciFunction) -> int:
    return -1 if function.numa_node is None else function.numa_node


def product_label(function: PciFunction) -> str:
    """Its product as a label value (``RBLN-CA25``, ``RBLN-CA25-VF``), else its vendor and
    device IDs (``1eff-1fff``)."""
    known = catalogue_entry(function.device) if function.vendor == REBELLIONS_VENDOR else None
    if known is None:
        return f"{function.vendor:04x}-{function.device:04x}"
    return known.product if known.kind == "PF" else f"{known.product}-VF"


def selected_functions(topology: Topology, selector: Selector) -> list[PciFunction]:
    """All functions the selection selects, in address order; a PF asked to carry VFs
    brings its VFs."""
    found = [f for a, f in sorted(topology.functions.items()) if selector.matches(f)]
    if selector.per_numa_node is not None:
        kept, taken = [], collections.Counter[int]()
        for function in found:
            taken[_numa(function)] += 1
            if taken[_numa(function)] <= selector.per_numa_node:
                kept.append(function)
        found = kept
    found = [f for f in found if f.address not in selector.exclude]
    if selector.vfs:
        vfs = [vf for pf in found if selector.vf_count(pf) for vf in topology.vfs_of(pf)]
        vfs = [vf for vf in vfs if vf.address not in selector.exclude]
        found = sorted({f.address: f for f in found + vfs}.values(), key=lambda f: f.address)
    return found


def named_functions(
    topology: Topology, selector: Selector, named: Sequence[PciAddress]
) -> list[PciFunction]:
    """The named functions, after checking each exists and is selected (duplicates dropped)."""
    result: list[PciFunction] = []
    chosen = {
        f.address for f in selected_functions(topology, replace(selector, exclude=frozenset()))
    }
    for address in dict.fromkeys(named):
        function = topology.get(address)
        if function is None:
            raise DeviceNotFoundError(
                f"no PCI function {address} on this host",
                bdf=str(address),
                remedy="list the functions with `vfio-manager status` or `lspci -D`",
            )
        if address not in chosen:
            raise NotSelectedError(
                f"{address} ({function.vendor:04x}:{function.device:04x}, class "
                f"0x{function.pci_class:06x}) is not selected by {selector.describe()}; "
                "refusing to touch it",
                bdf=str(address),
                remedy="pass selection options (--vendor, --class, --device-id, --product, "
                "--bdf, --numa-node, --per-numa-node) that select it if you really mean it",
            )
        result.append(function)
    return result


def select_targets(
    topology: Topology,
    selector: Selector,
    *,
    named: Sequence[PciAddress] = (),
    scope: Optional[Iterable[PciAddress]] = None,
    exclude: Collection[PciAddress] = (),
) -> list[PciFunction]:
    """The functions a request moves: the ``named`` ones (checked) or every selected one;
    with ``scope``, only those in the IOMMU groups of its functions; less ``exclude`` and the
    selection's own."""
    exclude = {*exclude, *selector.exclude}
    if named:
        found = named_functions(topology, selector, named)
    else:
        found = selected_functions(topology, selector)
    if scope is not None:
        members = in_groups_of(topology, scope)
        found = [f for f in found if f.address in members]
    return [f for f in found if f.address not in exclude]


def in_groups_of(topology: Topology, addresses: Iterable[PciAddress]) -> frozenset[PciAddress]:
    """``addresses`` (those present) with every member of their IOMMU groups."""
    functions = [f for f in map(topology.get, addresses) if f is not None]
    return frozenset(m.address for f in functions for m in topology.group_members(f))

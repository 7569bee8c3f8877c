"""Selection: vendor, class, device-ID, product, BDF and NUMA rules, a count per NUMA node,
exclusions, and their option parsing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness import FakeKernel
from vfio_manager.errors import NotSelectedError, UsageError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.inventory import read_topology
from vfio_manager.kernel.model import PciFunction
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.pipeline.selection import (
    Selector,
    named_functions,
    parse_count,
    parse_numa_node,
    parse_product,
    product_label,
    select_targets,
    selected_functions,
)

addr = PciAddress.parse


def _fn(vendor: int, device: int, pci_class: int) -> PciFunction:
    return PciFunction(PciAddress.parse("0000:03:00.0"), vendor, device, pci_class)


def test_default_selects_rebellions_accelerators_only() -> None:
    selector = Selector()
    assert selector.matches(_fn(0x1EFF, 0x1220, 0x120000))
    assert selector.matches(_fn(0x1EFF, 0x9999, 0x120000))  # unknown IDs still selected
    assert not selector.matches(_fn(0x1EFF, 0x1220, 0x060400))  # the vendor's own bridge
    assert not selector.matches(_fn(0x8086, 0x10D3, 0x120000))


def test_device_ids_narrow_the_selection() -> None:
    selector = Selector.from_options("0x1eff", "0x120000", ("0x1220", "1250"))
    assert selector.matches(_fn(0x1EFF, 0x1250, 0x120000))
    assert not selector.matches(_fn(0x1EFF, 0x1221, 0x120000))


def test_short_class_ignores_programming_interface() -> None:
    selector = Selector.from_options("0x8086", "0x0200", ())
    assert selector.matches(_fn(0x8086, 0x10D3, 0x020000))
    assert selector.matches(_fn(0x8086, 0x10D3, 0x020001))
    exact = Selector.from_options("0x8086", "0x020000", ())
    assert not exact.matches(_fn(0x8086, 0x10D3, 0x020001))


@pytest.mark.parametrize(
    ("vendor", "pci_class", "device"),
    [
        ("zz", "0x120000", ()),
        ("0x1ffff", "0x120000", ()),
        ("0x1eff", "0x1000000", ()),
        ("0x1eff", "", ()),
        ("0x1eff", "0x120000", ("-1",)),
        ("", "0x120000", ()),
    ],
)
def test_bad_ids_are_usage_errors(vendor: str, pci_class: str, device: tuple[str, ...]) -> None:
    with pytest.raises(UsageError):
        Selector.from_options(vendor, pci_class, device)


def test_describe_names_every_filter() -> None:
    text = Selector.from_options("0x1eff", "0x120000", ("0x1220",)).describe()
    assert text == "vendor 0x1eff, class 0x120000, device 0x1220"


@pytest.mark.parametrize("pci_class", ["0x12", "12", "0x120", "0x12000", "0x1200000", "0x"])
def test_a_class_is_4_or_6_hex_digits(pci_class: str) -> None:
    with pytest.raises(UsageError) as caught:
        Selector.from_options("0x1eff", pci_class, ())
    assert "not 4 or 6" in caught.value.message
    assert caught.value.remedy is not None
    assert "0x1200" in caught.value.remedy


# -- the rules every command shares: product, BDF, NUMA node, a count per NUMA node, exclude ---
def _numa_node(kernel: FakeKernel) -> list[str]:
    """Three NPUs on NUMA node 0 (one a CA25), two on node 1, a NIC: in BDF order."""
    bdfs = [
        ("0000:01:00.0", 0x1220, 0),
        ("0000:02:00.0", 0x1250, 0),
        ("0000:03:00.0", 0x1220, 0),
        ("0000:81:00.0", 0x1220, 1),
        ("0000:82:00.0", 0x1221, 1),
    ]
    for group, (bdf, device, node) in enumerate(bdfs):
        kernel.add_function(
            bdf, vendor=0x1EFF, device=device, pci_class=0x120000, iommu_group=group,
            numa_node=node,
        )  # fmt: skip
    kernel.add_function("0000:05:00.0", vendor=0x8086, device=0x10D3, pci_class=0x020000)
    return [bdf for bdf, _, _ in bdfs]


def _selected(kernel: FakeKernel, selector: Selector) -> list[str]:
    return [f.bdf for f in selected_functions(read_topology(Sysfs(kernel.sys_root)), selector)]


def test_products_bdfs_and_numa_nodes_narrow_the_selection(kernel: FakeKernel) -> None:
    a, b, c, d, e = _numa_node(kernel)
    assert _selected(kernel, Selector()) == [a, b, c, d, e]
    assert _selected(kernel, Selector(products=frozenset({"rbln-ca25"}))) == [b]
    assert _selected(kernel, Selector(products=frozenset({"rbln-ca22-vf"}))) == [e]
    assert _selected(kernel, Selector(products=frozenset({"1eff-1220"}))) == [a, c, d]
    assert _selected(kernel, Selector(bdfs=frozenset({addr(c), addr(d)}))) == [c, d]
    assert _selected(kernel, Selector(numa_nodes=frozenset({1}))) == [d, e]


def test_a_count_per_numa_node_takes_the_first_in_bdf_order(kernel: FakeKernel) -> None:
    a, b, _c, d, e = _numa_node(kernel)
    assert _selected(kernel, Selector(per_numa_node=1)) == [a, d]
    assert _selected(kernel, Selector(per_numa_node=2)) == [a, b, d, e]
    narrowed = Selector(per_numa_node=1, products=frozenset({"1eff-1220"}))
    assert _selected(kernel, narrowed) == [a, d], "counted among the functions the rules select"


def test_exclude_comes_last_and_frees_no_place_in_a_count(kernel: FakeKernel) -> None:
    """Excluding a function never puts another one on vfio-pci in its place."""
    a, b, c, d, e = _numa_node(kernel)
    assert _selected(kernel, Selector(exclude=frozenset({addr(b)}))) == [a, c, d, e]
    assert _selected(kernel, Selector(per_numa_node=1, exclude=frozenset({addr(a)}))) == [d]
    assert _selected(kernel, Selector(per_numa_node=0)) == []


def test_a_named_function_must_be_in_the_selection(kernel: FakeKernel) -> None:
    a, b, _c, _d, _e = _numa_node(kernel)
    topology = read_topology(Sysfs(kernel.sys_root))
    with pytest.raises(NotSelectedError, match="1 per NUMA node"):
        named_functions(topology, Selector(per_numa_node=1), [addr(b)])
    assert [f.bdf for f in named_functions(topology, Selector(per_numa_node=1), [addr(a)])] == [a]
    targets = select_targets(topology, Selector(exclude=frozenset({addr(a)})), named=[addr(a)])
    assert targets == [], "named but excluded: never planned"


@pytest.mark.parametrize(
    ("text", "label"),
    [("RBLN-CA25", "rbln-ca25"), ("rbln-ca22-vf", "rbln-ca22-vf"), ("1EFF-1FFF", "1eff-1fff")],
)
def test_product_names_as_catalogued_or_by_ids(text: str, label: str) -> None:
    assert parse_product(text) == label


@pytest.mark.parametrize("text", ["RBLN-CA99", "CA25", "1eff", "1eff-12345", ""])
def test_an_unknown_product_is_a_usage_error_naming_the_known_ones(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_product(text)
    assert "RBLN-CA25" in (caught.value.remedy or "")


@pytest.mark.parametrize(("parse", "text"), [(parse_numa_node, "x"), (parse_numa_node, "-2"),
                                            (parse_count, "-1"), (parse_count, "two")])  # fmt: skip
def test_numa_nodes_and_counts_are_checked(parse: Any, text: str) -> None:
    with pytest.raises(UsageError):
        parse(text)


def test_describe_names_every_rule() -> None:
    selector = Selector(
        products=frozenset({"rbln-ca25"}),
        bdfs=frozenset({addr("0000:01:00.0")}),
        numa_nodes=frozenset({0, 1}),
        per_numa_node=2,
        exclude=frozenset({addr("0000:02:00.0")}),
    )
    assert selector.describe() == (
        "vendor 0x1eff, class 0x120000, product RBLN-CA25, bdf 0000:01:00.0, NUMA node 0/1, "
        "2 per NUMA node, excluding 0000:02:00.0"
    )


def test_product_labels() -> None:
    assert product_label(_fn(0x1EFF, 0x1250, 0x120000)) == "RBLN-CA25"
    assert product_label(_fn(0x1EFF, 0x1251, 0x120000)) == "RBLN-CA25-VF"
    assert product_label(_fn(0x1EFF, 0x1FFF, 0x120000)) == "1eff-1fff"
    assert product_label(_fn(0x8086, 0x10D3, 0x020000)) == "8086-10d3"

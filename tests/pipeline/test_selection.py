"""Selection: vendor, class and device-ID filters, and their option parsing."""

from __future__ import annotations

import pytest

from vfio_manager.errors import UsageError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.model import PciFunction
from vfio_manager.pipeline.selection import Selector


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

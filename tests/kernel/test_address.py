"""BDF parsing: the gate in front of every path the tool builds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vfio_manager.errors import ExitCode, UsageError
from vfio_manager.kernel.address import PciAddress


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("0000:03:00.0", "0000:03:00.0"),
        ("03:00.0", "0000:03:00.0"),
        ("0000:3b:1f.7", "0000:3b:1f.7"),
        ("0000:3B:00.1", "0000:3b:00.1"),
        ("10000:e1:00.0", "10000:e1:00.0"),
        (" 0000:03:00.0\n", "0000:03:00.0"),
    ],
)
def test_accepts_kernel_forms(text: str, canonical: str) -> None:
    assert str(PciAddress.parse(text)) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "",
        "../x",
        "0000:03:00.8",
        "0000:03:20.0",
        "03:00",
        "0000:03:00.0/../..",
        "00:03:00.0",
        "0000:003:00.0",
        "g000:03:00.0",
        "0000:03:00.0\x00",
        "0000:03:00.0.1",
        "x" * 300,
    ],
)
def test_rejects_everything_else_as_usage_error(text: str) -> None:
    with pytest.raises(UsageError) as info:
        PciAddress.parse(text)
    assert info.value.exit_code == ExitCode.USAGE
    assert "lspci" in (info.value.remedy or "")


@given(st.text(max_size=40))
def test_parse_never_yields_a_path_component(text: str) -> None:
    try:
        address = PciAddress.parse(text)
    except UsageError:
        return
    rendered = str(address)
    assert "/" not in rendered
    assert ".." not in rendered
    assert PciAddress.parse(rendered) == address


def test_order_follows_address() -> None:
    addresses = [PciAddress.parse(t) for t in ("0000:03:00.1", "0000:03:00.0", "0000:01:1f.0")]
    assert [str(a) for a in sorted(addresses)] == ["0000:01:1f.0", "0000:03:00.0", "0000:03:00.1"]

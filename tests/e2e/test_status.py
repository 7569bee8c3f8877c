"""status --json says what sysfs says; the bridge group is reported not viable."""

import json
from collections.abc import Sequence
from typing import Any, Optional

import guest
from conftest import Baseline
from guest import E1000E, EDU, EDU_BEHIND_BRIDGE, SEL_E1000E, SEL_EDU

NICS = ["--vendor", "0x8086", "--class", "0x020000"]  # e1000 and e1000e


def _matching(vendor: str, pci_class: str, device: Optional[str] = None) -> list[str]:
    return sorted(
        b
        for b in guest.functions()
        if guest.attr(b, "vendor") == vendor
        and guest.attr(b, "class") == pci_class
        and (device is None or guest.attr(b, "device") == device)
    )


def _expected(bdf: str) -> dict[str, Any]:
    numa = int(guest.attr(bdf, "numa_node"))
    return {
        "bdf": bdf,
        "vendor": guest.attr(bdf, "vendor"),
        "device": guest.attr(bdf, "device"),
        "class": guest.attr(bdf, "class"),
        "driver": guest.driver(bdf),
        "driver_override": guest.override(bdf),
        "iommu_group": guest.group(bdf),
        "group_viable": guest.group_viable(bdf),
        "vfio_node": guest.vfio_dev(bdf),
        "numa_node": None if numa < 0 else numa,
    }


def _status(*selection: str) -> list[dict[str, Any]]:
    r = guest.run_cli("status", "--json", *selection)
    assert r.exit_code == 0, r
    assert r.writes == [], f"status wrote to sysfs\n{r}"
    devices: list[dict[str, Any]] = json.loads(r.stdout)["devices"]
    return devices


def _assert_status_matches_sysfs(selection: Sequence[str], expected_bdfs: list[str]) -> None:
    devices = _status(*selection)
    assert [d["bdf"] for d in devices] == expected_bdfs
    for d in devices:
        want = _expected(d["bdf"])
        got = {k: d.get(k) for k in want}
        assert got == want, f"status --json disagrees with sysfs for {d['bdf']}"
        assert "product" in d  # a name for known IDs, null for these stand-ins


def test_status_json_matches_sysfs_at_boot(baseline: Baseline) -> None:
    _assert_status_matches_sysfs(NICS, _matching("0x8086", "0x020000"))
    _assert_status_matches_sysfs(SEL_EDU, _matching("0x1234", "0x00ff00", "0x11e8"))
    _assert_status_matches_sysfs(SEL_E1000E, [E1000E])


def test_status_json_matches_sysfs_with_functions_on_vfio(baseline: Baseline) -> None:
    guest.move_to_vfio(E1000E)
    guest.move_to_vfio(EDU)
    assert guest.vfio_dev(E1000E)
    assert guest.vfio_dev(EDU)
    _assert_status_matches_sysfs(NICS, _matching("0x8086", "0x020000"))
    _assert_status_matches_sysfs(SEL_EDU, [EDU, EDU_BEHIND_BRIDGE])


def test_bridge_group_reported_not_viable(baseline: Baseline) -> None:
    by_bdf = {d["bdf"]: d for d in _status(*SEL_EDU)}
    assert by_bdf[EDU]["group_viable"] is True
    assert by_bdf[EDU_BEHIND_BRIDGE]["group_viable"] is False, by_bdf[EDU_BEHIND_BRIDGE]
    assert by_bdf[EDU_BEHIND_BRIDGE]["iommu_group"] == guest.group(guest.BRIDGE)

    # the kernel agrees: with the edu on vfio-pci the group still cannot be opened,
    # because the bridge in it is on shpchp
    guest.move_to_vfio(EDU_BEHIND_BRIDGE)
    group = guest.group(EDU_BEHIND_BRIDGE)
    assert group is not None
    assert guest.kernel_group_viable(group) is False
    by_bdf = {d["bdf"]: d for d in _status(*SEL_EDU)}
    assert by_bdf[EDU_BEHIND_BRIDGE]["group_viable"] is False
    assert by_bdf[EDU_BEHIND_BRIDGE]["vfio_node"] == guest.vfio_dev(EDU_BEHIND_BRIDGE)

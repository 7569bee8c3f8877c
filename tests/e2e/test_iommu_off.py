"""The boot with intel_iommu=off: the tool must explain and refuse, and write nothing."""

import json

import guest
import pytest
from conftest import Baseline
from guest import E1000E, SEL_E1000E

pytestmark = pytest.mark.iommu_off


def test_kernel_has_no_iommu_groups(baseline: Baseline) -> None:
    assert not guest.iommu_on()
    assert guest.group(E1000E) is None
    assert guest.driver(E1000E) == "e1000e"


def test_status_reports_no_group(baseline: Baseline) -> None:
    r = guest.run_cli("status", "--json", *SEL_E1000E)
    assert r.exit_code == 0, r
    assert r.writes == []
    (d,) = json.loads(r.stdout)["devices"]
    assert d["bdf"] == E1000E
    assert d["iommu_group"] is None
    assert d["group_viable"] is None
    assert d["vfio_node"] is None
    assert d["driver"] == "e1000e"


def test_check_fails_with_exit_3_and_remedy(baseline: Baseline) -> None:
    r = guest.run_cli("check", *SEL_E1000E)
    assert r.exit_code == 3, r
    assert r.writes == []
    assert "intel_iommu=on" in r.stdout + r.stderr, f"the remedy should name intel_iommu=on\n{r}"


def test_bind_all_refuses_before_writing(baseline: Baseline) -> None:
    r = guest.run_cli("bind-all", *SEL_E1000E)
    assert r.exit_code == 3, r
    assert r.writes == [], f"bind-all must refuse before writing anything\n{r}"
    assert guest.driver(E1000E) == "e1000e"
    assert guest.override(E1000E) is None

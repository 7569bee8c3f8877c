"""`vfio-manager check` on a host with the IOMMU on (the IOMMU-off case: test_iommu_off.py)."""

import json

import guest
from conftest import Baseline
from guest import SEL_E1000E


def test_check_passes_with_iommu_on(baseline: Baseline) -> None:
    r = guest.run_cli("check", *SEL_E1000E)
    assert r.exit_code == 0, r
    assert r.writes == [], f"check must be read-only\n{r}"


def test_check_json_with_iommu_on(baseline: Baseline) -> None:
    r = guest.run_cli("check", "--json", *SEL_E1000E)
    assert r.exit_code == 0, r
    json.loads(r.stdout)

"""`vfio-manager check` on a host with the IOMMU on (the IOMMU-off case: test_iommu_off.py)."""

import json

import guest
import pytest
from conftest import Baseline
from guest import SEL_E1000E


@pytest.mark.needs_cli("check", why="the `check` command (later issue)")
def test_check_passes_with_iommu_on(baseline: Baseline) -> None:
    r = guest.run_cli("check", *SEL_E1000E)
    assert r.exit_code == 0, r
    assert r.writes == [], f"check must be read-only\n{r}"


@pytest.mark.needs_cli("check", "--json", why="the `check --json` option (later issue)")
def test_check_json_with_iommu_on(baseline: Baseline) -> None:
    r = guest.run_cli("check", "--json", *SEL_E1000E)
    assert r.exit_code == 0, r
    json.loads(r.stdout)

"""The vfio modules missing: check names them; bind-all loads them (or refuses when told not to)."""

import os

import guest
from conftest import Baseline
from guest import E1000E, SEL_E1000E


def test_check_names_missing_modules_and_load_modules_fixes_it(baseline: Baseline) -> None:
    guest.unload_vfio()
    r = guest.run_cli("check", *SEL_E1000E)
    assert r.exit_code == 3, r
    assert r.writes == [], r
    assert "vfio" in r.stdout + r.stderr
    assert not guest.vfio_loaded(), "check without --load-modules must not load anything"
    r = guest.run_cli("check", "--load-modules", *SEL_E1000E)
    assert r.exit_code == 0, r
    assert guest.vfio_loaded()
    assert os.path.exists("/dev/vfio/vfio")


def test_bind_all_loads_missing_modules(baseline: Baseline) -> None:
    guest.unload_vfio()
    r = guest.run_cli("bind-all", *SEL_E1000E)
    assert r.exit_code == 0, r
    assert guest.vfio_loaded()
    assert guest.driver(E1000E) == "vfio-pci"


def test_bind_all_no_load_modules_refuses_before_writing(baseline: Baseline) -> None:
    guest.unload_vfio()
    r = guest.run_cli("bind-all", "--no-load-modules", *SEL_E1000E)
    assert r.exit_code == 3, r
    assert r.writes == [], r
    assert not guest.vfio_loaded()
    assert guest.driver(E1000E) == "e1000e"
    assert guest.override(E1000E) is None

"""Back to the host as found, on the real kernel, the writing CLI as separate processes.

The e1000e (03:00.0) plays the NPU. Each case puts it in a state the tool must give back
after `bind-all` + `unbind-all`, then checks that a second `unbind-all` writes nothing:
parked on pci-stub (by override, or by a pci-stub dynamic ID and an explicit bind), found
unbound (with and without an override), and a leftover `vfio-pci/new_id` with the native
driver registered after vfio-pci (issue 9, items 1 and 2). Harness writes set the states up;
each case removes the dynamic IDs it added and puts the guest back before it ends.
"""

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import guest
import pytest
from conftest import Baseline
from guest import E1000E, PCI, SEL_E1000E

STUB = "/sys/bus/pci/drivers/pci-stub"
VFIO = "/sys/bus/pci/drivers/vfio-pci"
OVERRIDE = f"{PCI}/{E1000E}/driver_override"
REMOVE_ID = f"echo 8086 10d3 > {VFIO}/remove_id"


def _ok(state: str, *argv: str) -> "subprocess.CompletedProcess[str]":
    r = guest.cli_process(state, *argv, *SEL_E1000E)
    assert r.returncode == 0, f"{argv}: {r.stdout}{r.stderr}"
    return r


def _writes(state: str, *argv: str) -> int:
    """Run a writing command with --json; its number of sysfs writes."""
    writes: int = json.loads(_ok(state, *argv, "--json").stdout)["writes"]
    return writes


def _cycle(
    state: str, found: tuple[Optional[str], Optional[str]]
) -> "subprocess.CompletedProcess[str]":
    """bind-all, unbind-all: back as found; a second unbind-all writes nothing."""
    _ok(state, "bind-all")
    assert guest.state([E1000E]) == {E1000E: ("vfio-pci", "vfio-pci")}
    back = _ok(state, "unbind-all")
    assert guest.state([E1000E]) == {E1000E: found}, back.stdout
    assert _writes(state, "unbind-all") == 0
    assert guest.state([E1000E]) == {E1000E: found}
    return back


@pytest.fixture
def pci_stub(baseline: Baseline) -> Iterator[None]:
    """pci-stub loaded (registered after e1000e); unloaded again with its dynamic IDs."""
    guest.modprobe("pci_stub")
    try:
        yield
    finally:
        _remove_id(STUB)
        guest.restore(baseline)
        guest.modprobe("-r", "pci_stub")


def _remove_id(driver_dir: str) -> None:
    # ENODEV: no such dynamic ID (the case did not get to add it)
    with contextlib.suppress(OSError):
        guest.write(f"{driver_dir}/remove_id", "8086 10d3")


def test_parked_on_pci_stub_by_override_goes_back_to_pci_stub(
    pci_stub: None, tmp_path: Path
) -> None:
    guest.write(OVERRIDE, "pci-stub")
    guest.write(f"{PCI}/{E1000E}/driver/unbind", E1000E)
    guest.write("/sys/bus/pci/drivers_probe", E1000E)
    assert guest.state([E1000E]) == {E1000E: ("pci-stub", "pci-stub")}
    _cycle(str(tmp_path / "state"), ("pci-stub", "pci-stub"))


def test_parked_on_pci_stub_by_a_dynamic_id_goes_back_without_an_override(
    pci_stub: None, tmp_path: Path
) -> None:
    guest.write(f"{STUB}/new_id", "8086 10d3")
    guest.write(f"{PCI}/{E1000E}/driver/unbind", E1000E)
    guest.write(f"{STUB}/bind", E1000E)
    assert guest.state([E1000E]) == {E1000E: ("pci-stub", None)}
    _cycle(str(tmp_path / "state"), ("pci-stub", None))


@pytest.mark.parametrize("override", [None, "pci-stub"])
def test_found_unbound_stays_unbound_with_its_override(
    baseline: Baseline, tmp_path: Path, override: Optional[str]
) -> None:
    if override is not None:
        guest.write(OVERRIDE, override)  # pci-stub is not loaded: nothing binds
    guest.write(f"{PCI}/{E1000E}/driver/unbind", E1000E)
    found: tuple[Optional[str], Optional[str]] = (None, override)
    assert guest.state([E1000E]) == {E1000E: found}
    _cycle(str(tmp_path / "state"), found)


def test_a_leftover_vfio_pci_new_id_is_reported_and_does_not_keep_the_function(
    baseline: Baseline, tmp_path: Path
) -> None:
    state = str(tmp_path / "state")
    guest.write(f"{VFIO}/new_id", "8086 10d3")  # the e1000e is bound: nothing moves yet
    try:
        guest.modprobe("-r", "e1000e")  # reloaded: e1000e now registers after vfio-pci
        guest.modprobe("e1000e")
        guest.wait_for(lambda: guest.driver(E1000E) == "e1000e", what="e1000e to bind")
        back = _cycle(state, ("e1000e", None))
        assert "drivers_probe picked vfio-pci" in back.stdout, back.stdout
        assert REMOVE_ID in back.stdout

        # the probe alone now hands it to vfio-pci, with no override: the evidence
        guest.write(f"{PCI}/{E1000E}/driver/unbind", E1000E)
        guest.write("/sys/bus/pci/drivers_probe", E1000E)
        assert guest.state([E1000E]) == {E1000E: ("vfio-pci", None)}
        # the read-only commands in this process (a process start is slow under TCG)
        status = guest.run_cli("status", "--json", *SEL_E1000E)
        assert status.exit_code == 0, status
        (warning,) = json.loads(status.stdout)["warnings"]
        assert warning["bdf"] == E1000E
        assert warning["remedy"] == REMOVE_ID
        check = guest.run_cli("check", *SEL_E1000E)
        assert check.exit_code == 0, check  # a warning: the host is ready
        assert REMOVE_ID in check.stdout, check
        assert _writes(state, "unbind-all") == 4  # the override pins e1000e for the probe
        assert guest.state([E1000E]) == {E1000E: ("e1000e", None)}
    finally:
        _remove_id(VFIO)

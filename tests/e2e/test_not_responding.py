"""A function that stops responding (its config space reads all-ones), on the real kernel.

The guest cannot unplug a device by surprise, so the harness makes one unreachable the way a
dead link does: it moves the secondary bus number of the root port above the e1000e, so config
reads of 03:00.0 find no device and read all-ones while its BARs still decode (kernel-facts
K27). Writing the old number back brings it back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import guest
import pytest
from conftest import Baseline
from guest import E1000E, PCI, SEL_E1000E

from vfio_manager.kernel.verbs import Kernel

ROOT_PORT = "0000:00:07.0"  # the PCIe root port above E1000E (bus 03)
_SECONDARY, _SUBORDINATE = 0x19, 0x1A  # type 1 header: the bus range behind the bridge
_NOWHERE = 0x20  # a bus number no device sits on

pytestmark = pytest.mark.both_kernels


def _config(bdf: str, size: int = 64) -> bytes:
    with open(f"{PCI}/{bdf}/config", "rb") as f:
        return f.read(size)


def _set_bus_range(secondary: int, subordinate: int) -> None:
    fd = os.open(f"{PCI}/{ROOT_PORT}/config", os.O_WRONLY)
    try:
        os.pwrite(fd, bytes([secondary]), _SECONDARY)
        os.pwrite(fd, bytes([subordinate]), _SUBORDINATE)
    finally:
        os.close(fd)


def _break() -> None:
    _set_bus_range(_NOWHERE, _NOWHERE)


@contextmanager
def unreachable_config() -> Iterator[None]:
    """E1000E's config space reads all-ones inside; put back after, whatever happens."""
    saved = _config(ROOT_PORT, 0x1C)
    try:
        yield
    finally:
        _set_bus_range(saved[_SECONDARY], saved[_SUBORDINATE])
        assert _config(E1000E, 2) == b"\x86\x80", "the e1000e did not come back"


def _status() -> dict[str, Any]:
    r = guest.run_cli("status", "--json", *SEL_E1000E)
    assert r.exit_code == 0, r
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def test_a_function_that_reads_all_ones_is_refused_and_never_written(
    baseline: Baseline,
) -> None:
    with unreachable_config():
        _break()
        # the kernel's view: config reads all-ones, the sysfs IDs are the cached ones
        assert _config(E1000E) == b"\xff" * 64
        assert guest.attr(E1000E, "vendor") == "0x8086"
        assert guest.driver(E1000E) == "e1000e"
        doc = _status()
        (device,) = doc["devices"]
        assert device["not_responding"] is True
        (warning,) = doc["warnings"]
        assert warning["bdf"] == E1000E
        assert f"/sys/bus/pci/devices/{E1000E}/reset" in warning["remedy"]
        for argv in (("bind", E1000E), ("bind", E1000E, "--force")):
            r = guest.run_cli(*argv, *SEL_E1000E)
            assert r.exit_code == 1, r
            assert "it is not responding: its config space reads all-ones" in r.stdout, r
            assert r.writes == [], r
            assert guest.driver(E1000E) == "e1000e"
            assert guest.override(E1000E) is None
    (device,) = _status()["devices"]
    assert device["not_responding"] is False
    r = guest.run_cli("bind", E1000E, *SEL_E1000E)
    assert r.exit_code == 0, r


def test_a_function_that_dies_half_way_is_reported_so_and_written_no_more(
    baseline: Baseline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = str(tmp_path / "state")
    set_override = Kernel.set_override

    def then_die(kernel: Kernel, address: object, driver: str) -> None:
        set_override(kernel, address, driver)  # type: ignore[arg-type]
        _break()

    monkeypatch.setattr(Kernel, "set_override", then_die)
    with unreachable_config():
        r = guest.run_cli("--state-dir", state, "bind", E1000E, *SEL_E1000E)
        assert r.exit_code == 1, r
        assert f"{E1000E} stopped responding during the transition" in r.stdout, r
        assert "reset" in r.stdout, r
        ours = [w for w in r.writes if ROOT_PORT not in w]
        assert ours == [f"{PCI}/{E1000E}/driver_override"], r
        assert guest.driver(E1000E) == "e1000e", "not unbound once it stopped responding"
        assert guest.override(E1000E) == "vfio-pci", "and no undo written either"

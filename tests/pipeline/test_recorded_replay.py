"""Harness fidelity: replay what the real kernel did (QEMU tier recordings) on the fake one.

Each file in tests/fixtures/e2e-recorded/ holds a sysfs snapshot taken in the QEMU guest
before a scripted sequence of vfio-manager commands, and after each command the exit code,
the files written and another snapshot. Here the "before" snapshot becomes a fake kernel, the
same commands run against it, and after each step the fake must agree with the real kernel
on exit codes, writes, driver links, overrides and /dev/vfio nodes. A difference is a harness
bug or an engine bug; re-record with `tools/e2e/run --record` when behaviour changes on
purpose (docs/testing.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness import FakeKernel
from tests.support import invoke
from vfio_manager.host import modules
from vfio_manager.host.modules import RunResult

RECORDED = Path(__file__).parents[1] / "fixtures" / "e2e-recorded"
SEQUENCES = sorted(p.stem for p in RECORDED.glob("*.json"))
# read before pyfakefs hides the real disk
_DATA = {name: json.loads((RECORDED / f"{name}.json").read_text()) for name in SEQUENCES}


Binding = dict[str, tuple[Optional[str], Optional[str]]]  # BDF -> (driver, override)


def _binding(snapshot: dict[str, Any]) -> Binding:
    """driver link name and override of every function, as the snapshot recorded them."""
    result = {}
    for bdf, device in snapshot["devices"].items():
        link = device["links"].get("driver")
        override = device["attrs"].get("driver_override")
        result[bdf] = (
            link.rsplit("/", 1)[-1] if link else None,
            None if override in (None, "(null)") else override,
        )
    return result


def _fake_binding(
    kernel: FakeKernel, bdfs: list[str]
) -> dict[str, tuple[Optional[str], Optional[str]]]:
    return {bdf: (kernel.driver_of(bdf), kernel.override_of(bdf)) for bdf in bdfs}


def test_every_recording_is_replayed() -> None:
    assert len(SEQUENCES) >= 6, f"recordings missing from {RECORDED}"


@pytest.mark.parametrize("name", SEQUENCES)
def test_fake_kernel_matches_the_real_one(
    fs: FakeFilesystem, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    recording = _data(name)
    kernel = FakeKernel.from_snapshot(fs, recording["before"])

    def modprobe(argv: Sequence[str]) -> RunResult:
        return RunResult(*kernel.run_modprobe(argv))

    monkeypatch.setattr(modules, "subprocess_runner", modprobe)
    bdfs = sorted(recording["before"]["devices"])
    for number, step in enumerate(recording["steps"]):
        where = f"{name} step {number} ({' '.join(step['argv'][:2])})"
        kernel.clear_writes()
        result = invoke(kernel, *step["argv"])
        assert result.exit_code == step["exit_code"], f"{where}: {result.stdout}{result.stderr}"
        real_writes = [w.removeprefix("/sys/") for w in step["writes"]]
        assert [w.path for w in kernel.writes] == real_writes, where
        assert _fake_binding(kernel, bdfs) == _binding(step["after"]), where
        assert kernel.vfio_devs() == set(step["after"]["dev_vfio"] or []), where


def _data(name: str) -> dict[str, Any]:
    return _DATA[name]  # type: ignore[no-any-return]

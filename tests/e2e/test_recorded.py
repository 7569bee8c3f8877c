"""Scripted CLI sequences with sysfs snapshots before and after each step.

Each sequence is written as <out>/recorded/<name>.json (tools/e2e/run --record copies them
to tests/fixtures/e2e-recorded/; docs/testing.md describes the format). The host suite
replays them against the fake kernel: same argv, same exit code, same resulting sysfs.
"""

import json
import os
import platform
from collections.abc import Sequence
from typing import Any, Optional

import guest
import pytest
from conftest import Baseline
from guest import E1000, SEL_E1000, SEL_E1000E, SEL_EDU
from sysfs_snapshot import snapshot

FORMAT = 1
NICS = ["--vendor", "0x8086", "--class", "0x020000"]

# name: (setup: argv lists or callables, run but not recorded; recorded steps)
Recorded = tuple[list[Any], list[list[str]]]  # (setup, recorded steps)
SEQUENCES: dict[str, Recorded] = {
    "bind-all-e1000e": ([], [["bind-all", *SEL_E1000E]]),
    "bind-all-e1000e-again": ([["bind-all", *SEL_E1000E]], [["bind-all", *SEL_E1000E]]),
    "unbind-all-e1000e": ([["bind-all", *SEL_E1000E]], [["unbind-all", *SEL_E1000E]]),
    "bind-e1000-alone-refused": ([], [["bind", E1000, *SEL_E1000]]),
    "bind-all-edu": ([], [["bind-all", *SEL_EDU], ["unbind-all", *SEL_EDU]]),
    "bind-all-e1000e-vfio-unloaded": (
        [guest.unload_vfio],
        [["check", *SEL_E1000E], ["bind-all", *SEL_E1000E], ["unbind-all", *SEL_E1000E]],
    ),
    "status-json": (
        [["bind-all", *SEL_E1000E]],
        [["status", "--json", *NICS], ["status", "--json", *SEL_EDU]],
    ),
}
OFF_SEQUENCES: dict[str, Recorded] = {
    "iommu-off-bind-all-e1000e": (
        [],
        [["status", "--json", *SEL_E1000E], ["bind-all", *SEL_E1000E]],
    ),
}


def _record(
    name: str, setup: Sequence[Any], steps: Sequence[list[str]], out_dir: Optional[str]
) -> dict[str, Any]:
    for action in setup:
        if callable(action):
            action()
            continue
        r = guest.run_cli(*action)
        assert r.exception is None or isinstance(r.exception, SystemExit), r
    record: dict[str, Any] = {
        "format": FORMAT,
        "sequence": name,
        "kernel": platform.release(),
        "before": snapshot(),
        "steps": [],
    }
    for argv in steps:
        r = guest.run_cli(*argv)
        assert r.exception is None or isinstance(r.exception, SystemExit), r
        record["steps"].append(
            {
                "argv": argv,
                "exit_code": r.exit_code,
                "stdout": r.stdout,
                "writes": r.writes,
                "after": snapshot(),
            }
        )
    for bdf in guest.SHARES:
        assert guest.driver(bdf) == "virtio-pci"
    if out_dir:
        os.makedirs(f"{out_dir}/recorded", exist_ok=True)
        with open(f"{out_dir}/recorded/{name}.json", "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.write("\n")
    return record


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_record(name: str, baseline: Baseline, out_dir: Optional[str]) -> None:
    setup, steps = SEQUENCES[name]
    record = _record(name, setup, steps, out_dir)
    print(name, [(s["argv"][0], s["exit_code"], len(s["writes"])) for s in record["steps"]])


@pytest.mark.iommu_off
@pytest.mark.parametrize("name", list(OFF_SEQUENCES))
def test_record_iommu_off(name: str, baseline: Baseline, out_dir: Optional[str]) -> None:
    setup, steps = OFF_SEQUENCES[name]
    record = _record(name, setup, steps, out_dir)
    print(name, [(s["argv"][0], s["exit_code"], len(s["writes"])) for s in record["steps"]])

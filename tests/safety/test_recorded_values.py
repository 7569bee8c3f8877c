"""Odd values sysfs shows are recorded as they are, and read back: never "this is a bug".

A function whose driver_override held a '/' had its journal record quarantined by the
journal that wrote it, and the bind failed with "this is a bug"; so did a function whose
driver link resolved to an empty name. The override is a string written back to
driver_override, not a path; a driver name that is no usable path component is recorded as
unknown. (The property test over odd values is in tests/unit/test_journal.py.)
"""

from __future__ import annotations

import json
import os
import posixpath

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import VFIO, invoke, pending, plant_record, state, state_dir


def corrupt_records(kernel: FakeKernel) -> list[str]:
    directory = state_dir(kernel)
    return [n for n in os.listdir(directory) if n.endswith(".corrupt")]


def test_an_override_with_a_slash_is_recorded_and_the_bind_succeeds(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    with open(f"{kernel.sys_root}/bus/pci/devices/{npu}/driver_override", "w") as handle:
        handle.write("odd/override\n")
    assert kernel.override_of(npu) == "odd/override"
    result = invoke(kernel, "bind-all")
    assert result.exit_code == 0, result.stdout
    assert "bug" not in result.stdout + result.stderr
    assert state(kernel, npu) == VFIO
    assert corrupt_records(kernel) == []
    origin = posixpath.join(state_dir(kernel), f"origin-{npu}.json")
    with open(origin, encoding="utf-8") as handle:
        recorded = json.load(handle)
    assert (recorded["original_driver"], recorded["original_override"]) == (
        "rebellions",
        "odd/override",
    )


def test_a_driver_link_without_a_usable_name_is_recorded_as_unknown(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    link = f"{kernel.sys_root}/bus/pci/devices/{npu}/driver"
    os.unlink(link)
    os.symlink("/", link)  # resolves to the empty name
    result = invoke(kernel, "bind-all")
    assert "bug" not in result.stdout + result.stderr
    assert corrupt_records(kernel) == []
    assert "recorded as unknown" in result.stderr
    assert result.exit_code == 1  # it cannot be unbound from a driver it cannot name
    assert "'' is not a valid driver name" in result.stdout
    assert kernel.override_of(npu) is None, "put back where it started"
    assert pending(kernel) == []


def test_a_record_whose_driver_was_unknown_is_refused_not_rolled_back(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1, driver="vfio-pci")
    path = plant_record(
        kernel, npu, vendor_device="1eff:1220", original_driver=None, original_driver_unknown=True
    )
    kernel.clear_writes()
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 1
    assert kernel.writes == []
    assert "recorded as unknown" in result.stdout
    assert os.path.exists(path)


def test_an_origin_whose_driver_was_unknown_gives_way_to_modules_alias(
    kernel: FakeKernel,
) -> None:
    (npu,) = npu_node(kernel, count=1, driver="vfio-pci")
    directory = state_dir(kernel)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(posixpath.join(directory, f"origin-{npu}.json"), "w", encoding="utf-8") as handle:
        json.dump(
            {
                "version": 1,
                "record": "origin",
                "bdf": npu,
                "direction": "vfio",
                "vendor_device": "1eff:1220",
                "original_driver": None,
                "original_driver_unknown": True,
                "original_override": None,
                "steps_done": [],
                "pid": 1,
                "origin_created": False,
            },
            handle,
        )
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 0, result.stdout
    assert kernel.driver_of(npu) == "rebellions", "not left unbound as if it had had no driver"
    assert "modules.alias" in result.stdout

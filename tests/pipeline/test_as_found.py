"""Back to the host exactly as found, for as long as it matters.

A function whose original driver is not the one `drivers_probe` picks (parked on pci-stub; a
leftover `vfio-pci/new_id` with the native driver registered after vfio-pci); "as found"
lasting beyond one run (a function found unbound stays unbound on the second `unbind-all`);
the original `driver_override` given back; a function hot-removed while the run waits for its
/dev/vfio node. The fake kernel plays the node; operator writes go through its files.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import (
    HOST,
    VFIO,
    Run,
    invoke,
    operator,
    park_on_pci_stub,
    state,
    state_dir,
    with_pci_stub,
)

REMOVE_ID = "echo 1eff 1220 > /sys/bus/pci/drivers/vfio-pci/remove_id"


def dev(bdf: str, attr: str) -> str:
    return f"bus/pci/devices/{bdf}/{attr}"


def cycle(kernel: FakeKernel) -> Run:
    """bind-all (must succeed), then unbind-all with the writes of the latter only."""
    bound = invoke(kernel, "bind-all")
    assert bound.exit_code == 0, bound.stdout
    kernel.clear_writes()
    return invoke(kernel, "unbind-all")


def assert_converged(kernel: FakeKernel) -> None:
    kernel.clear_writes()
    again = invoke(kernel, "unbind-all")
    assert again.exit_code == 0, again.stdout
    assert kernel.writes == [], "a converged node was written to"


# -- the recorded driver, whatever drivers_probe would pick ------------------------------------
@pytest.mark.parametrize("keep_override", [True, False], ids=["by-override", "by-bind"])
def test_a_function_parked_on_pci_stub_goes_back_to_pci_stub(
    kernel: FakeKernel, keep_override: bool
) -> None:
    (npu,) = npu_node(kernel, count=1)
    with_pci_stub(kernel)  # loaded after the native driver, as a module is
    park_on_pci_stub(kernel, npu, keep_override=keep_override)
    found = state(kernel, npu)
    result = cycle(kernel)
    assert result.exit_code == 0, result.stdout
    assert state(kernel, npu) == found
    assert not [w for w in kernel.writes if "rebellions" in w.path]  # never probed onto it
    assert len(kernel.writes) == (3 if keep_override else 4)
    assert_converged(kernel)
    assert state(kernel, npu) == found


def test_a_leftover_vfio_pci_new_id_does_not_keep_the_npu_on_vfio_pci(
    kernel: FakeKernel,
) -> None:
    (npu,) = npu_node(kernel, count=1)
    operator(kernel, "bus/pci/drivers/vfio-pci/new_id", "1eff 1220")  # a script's leftover
    kernel.unload_module("rebellions")  # reloaded: now registered after vfio-pci
    kernel.load_module("rebellions")
    assert state(kernel, npu) == HOST
    result = cycle(kernel)
    assert result.exit_code == 0, result.stdout
    assert state(kernel, npu) == HOST
    assert "drivers_probe picked vfio-pci" in result.stdout, result.stdout
    assert REMOVE_ID in result.stdout
    assert len(kernel.writes) == 5  # clear, unbind, probe; then unbind vfio-pci, bind
    assert_converged(kernel)


def test_a_function_bound_by_a_vfio_pci_dynamic_id_is_reported_and_returned(
    kernel: FakeKernel,
) -> None:
    first, second = npu_node(kernel, count=2, driver=None)
    operator(kernel, "bus/pci/drivers/vfio-pci/new_id", "1eff 1220")  # binds both at once
    kernel.unload_module("rebellions")
    kernel.load_module("rebellions")
    operator(kernel, "bus/pci/drivers/vfio-pci/unbind", second)
    operator(kernel, "bus/pci/drivers_probe", second)  # vfio-pci comes first: back on it
    assert state(kernel, first) == state(kernel, second) == ("vfio-pci", None)

    status = invoke(kernel, "status")
    assert status.exit_code == 0
    assert "dynamic ID" in status.stdout, status.stdout
    assert REMOVE_ID in status.stdout
    warnings = invoke(kernel, "status", "--json").json()["warnings"]
    assert {w["bdf"] for w in warnings} == {first, second}
    assert all(w["remedy"] == REMOVE_ID for w in warnings)
    check = invoke(kernel, "check")
    assert check.exit_code == 0, check.stdout  # binding works: a warning, not a failure
    assert REMOVE_ID in check.stdout, check.stdout
    checks = {c["name"]: c for c in invoke(kernel, "check", "--json").json()["checks"]}
    assert checks["dynamic-ids"]["ok"] is False
    assert checks["dynamic-ids"]["remedy"].startswith(REMOVE_ID)

    kernel.clear_writes()
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 0, result.stdout
    assert state(kernel, first) == state(kernel, second) == HOST
    assert len(kernel.writes) == 8  # the override pins rebellions for the probe: 4 each
    assert_converged(kernel)


# -- "as found" lasts, the override included ---------------------------------------------------
def test_a_function_found_unbound_stays_unbound_run_after_run(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1, driver=None)
    for _ in range(2):
        result = cycle(kernel)
        assert result.exit_code == 0, result.stdout
        assert state(kernel, npu) == (None, None)
        assert_converged(kernel)
        assert state(kernel, npu) == (None, None)


@pytest.mark.parametrize(
    ("driver", "override", "writes"),
    [("rebellions", "rebellions", 3), (None, "pci-stub", 2), (None, "rebellions", 2)],
)
def test_the_original_override_is_given_back(
    kernel: FakeKernel, driver: str | None, override: str, writes: int
) -> None:
    (npu,) = npu_node(kernel, count=1, driver=driver)
    operator(kernel, dev(npu, "driver_override"), override)
    result = cycle(kernel)
    assert result.exit_code == 0, result.stdout
    assert state(kernel, npu) == (driver, override)
    assert len(kernel.writes) == writes
    assert_converged(kernel)


def test_a_failed_bind_of_an_unbound_function_keeps_it_unbound_afterwards(
    kernel: FakeKernel,
) -> None:
    (npu,) = npu_node(kernel, count=1, driver=None)
    kernel.fail_probe("vfio-pci", npu, 22)
    failed = invoke(kernel, "bind-all")
    assert failed.exit_code == 1
    assert state(kernel, npu) == (None, None)
    kernel.fail_probe("vfio-pci", npu, None)
    assert_converged(kernel)
    assert state(kernel, npu) == (None, None)


def test_a_failed_bind_from_pci_stub_is_put_back_on_pci_stub(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    with_pci_stub(kernel)  # loaded after the native driver, as a module is
    park_on_pci_stub(kernel, npu, keep_override=False)
    kernel.fail_probe("vfio-pci", npu, 22)
    failed = invoke(kernel, "bind-all")
    assert failed.exit_code == 1
    assert state(kernel, npu) == ("pci-stub", None), failed.stdout
    assert "restored to pci-stub" in failed.stdout, failed.stdout


def test_as_found_ends_when_someone_else_changes_the_function(kernel: FakeKernel) -> None:
    """Found unbound and returned so; an admin then binds the native driver, and a script
    moves it to vfio-pci behind our back: the way home is the native driver now."""
    (npu,) = npu_node(kernel, count=1, driver=None)
    assert cycle(kernel).exit_code == 0
    operator(kernel, "bus/pci/drivers_probe", npu)
    assert state(kernel, npu) == HOST
    assert_converged(kernel)  # seen on rebellions: the unbound origin is over
    operator(kernel, dev(npu, "driver_override"), "vfio-pci")
    operator(kernel, "bus/pci/drivers/rebellions/unbind", npu)
    operator(kernel, "bus/pci/drivers_probe", npu)
    assert state(kernel, npu) == VFIO
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 0, result.stdout
    assert state(kernel, npu) == HOST


def test_the_origin_record_outlives_the_return_and_a_dry_run_changes_nothing(
    kernel: FakeKernel,
) -> None:
    (npu,) = npu_node(kernel, count=1, driver=None)
    assert cycle(kernel).exit_code == 0
    origin = os.path.join(state_dir(kernel), f"origin-{npu}.json")
    assert os.path.exists(origin)
    operator(kernel, "bus/pci/drivers_probe", npu)  # the origin is stale now
    dry = invoke(kernel, "unbind-all", "--dry-run")
    assert dry.exit_code == 0
    assert os.path.exists(origin)  # a dry run reads the journal, never changes it
    assert invoke(kernel, "unbind-all").exit_code == 0
    assert not os.path.exists(origin)


# -- hot-removed while the run waits for /dev/vfio/N -------------------------------------------
def test_a_function_removed_during_the_wait_is_reported_removed_at_once(
    kernel: FakeKernel,
) -> None:
    first, second = npu_node(kernel, count=2)
    # unplugged after its own writes, before the shared wait: its node goes with it (one
    # function after another, so that "after its own writes" is a write of the second's)
    kernel.remove_function_on_write(dev(second, "driver_override"), first)
    started = time.monotonic()
    result = invoke(kernel, "--timeout", "20", "--parallel", "1", "bind-all", "--json")
    took = time.monotonic() - started
    report = {f["bdf"]: f for f in result.json()["functions"]}
    assert result.exit_code == 1
    assert "removed" in report[first]["reason"], report[first]
    assert "did not appear" not in report[first]["reason"]
    assert report[first]["step"] == "wait-vfio-node"
    assert took < 10, f"waited {took:.1f}s for a function that was gone"

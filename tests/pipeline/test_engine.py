"""Engine behaviour that the CLI tests cannot reach cheaply: the shared wait deadline."""

from __future__ import annotations

import pytest

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import FakeClock
from vfio_manager.host.driver_choice import DriverResolver
from vfio_manager.host.files import HostFiles
from vfio_manager.kernel.inventory import read_topology
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.kernel.verbs import Kernel
from vfio_manager.pipeline.engine import Engine, Result
from vfio_manager.pipeline.plan import plan_to_vfio
from vfio_manager.pipeline.selection import Selector


def _bind_all(kernel: FakeKernel, clock: FakeClock, sysfs: Sysfs) -> list[Result]:
    topology = read_topology(sysfs)
    selector = Selector()
    targets = [f for f in topology.functions.values() if selector.matches(f)]
    resolver = DriverResolver.load(topology, HostFiles(kernel.host_root), sysfs)
    plan = plan_to_vfio(topology, targets, selector=selector, vfio_driver_for=resolver.vfio_driver)
    engine = Engine(Kernel(sysfs), node_timeout=5.0, clock=clock, sleep=clock.sleep)
    return [o.result for o in engine.apply(plan).outcomes]


def test_nodes_are_awaited_side_by_side_under_one_deadline(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    npu_node(kernel, count=4)
    sysfs = Sysfs(kernel.sys_root, kernel.dev_root)
    monkeypatch.setattr(sysfs, "vfio_dev_exists", lambda _group: False)
    clock = FakeClock(0.0)
    statuses = _bind_all(kernel, clock, sysfs)
    assert statuses == [Result.FAILED] * 4
    # one deadline for all four, not four deadlines one after another
    assert 5.0 <= clock.slept < 5.2


def test_nodes_that_appear_end_the_wait_at_once(kernel: FakeKernel) -> None:
    npu_node(kernel, count=2)
    clock = FakeClock(0.0)
    statuses = _bind_all(kernel, clock, Sysfs(kernel.sys_root, kernel.dev_root))
    assert statuses == [Result.CHANGED] * 2
    assert clock.slept == 0.0


def test_missing_node_is_failure_but_not_rolled_back(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    (bdf,) = npu_node(kernel, count=1)
    sysfs = Sysfs(kernel.sys_root, kernel.dev_root)
    monkeypatch.setattr(sysfs, "vfio_dev_exists", lambda _group: False)
    assert _bind_all(kernel, FakeClock(0.0), sysfs) == [Result.FAILED]
    # the function reached its target state (vfio-pci with the override); only the node is late
    assert kernel.driver_of(bdf) == "vfio-pci"
    assert kernel.override_of(bdf) == "vfio-pci"


def test_vfio_driver_missing_at_probe_fails_with_errno_and_restores(kernel: FakeKernel) -> None:
    """The gate normally stops this; the engine must still leave no stale override."""
    (bdf,) = npu_node(kernel, count=1, vfio_loaded=False)
    sysfs = Sysfs(kernel.sys_root, kernel.dev_root)
    topology = read_topology(sysfs)
    targets = [f for f in topology.functions.values() if Selector().matches(f)]
    plan = plan_to_vfio(topology, targets, selector=Selector())
    report = Engine(Kernel(sysfs), clock=FakeClock(0.0), sleep=FakeClock(0.0).sleep).apply(plan)
    (outcome,) = report.outcomes
    assert outcome.result is Result.FAILED
    assert "vfio-pci did not bind" in (outcome.reason or "")
    assert outcome.restored_to is not None
    assert outcome.restored_to.startswith("rebellions")
    assert kernel.driver_of(bdf) == "rebellions"
    assert kernel.override_of(bdf) is None

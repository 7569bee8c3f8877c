"""The engine: the shared wait deadline, driven directly on a fake clock; through the CLI, a
function gone mid-transition and an undo back to pci-stub."""

from __future__ import annotations

import errno

import pytest

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import (
    FakeClock,
    invoke,
    named_bdf,
    operator,
    park_on_pci_stub,
    state,
    with_pci_stub,
)
from vfio_manager.host.driver_choice import DriverResolver
from vfio_manager.host.files import HostFiles
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.inventory import read_topology
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.kernel.verbs import Kernel
from vfio_manager.pipeline.engine import Engine, Result
from vfio_manager.pipeline.plan import plan_to_vfio
from vfio_manager.pipeline.selection import Selector
from vfio_manager.safety.writer import DeadlineExceededError


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


# -- through the CLI: a function gone mid-transition, an undo to pci-stub ----------------------
def test_a_function_gone_mid_transition_is_not_written_to_again(kernel: FakeKernel) -> None:
    """engine:181: a function unplugged by a write is reported as gone, not "restored"."""
    gone, other = npu_node(kernel, count=2)
    kernel.remove_function_on_write(f"bus/pci/devices/{gone}/driver_override", gone)
    result = invoke(kernel, "--timeout", "1", "bind-all", "--json")
    assert result.exit_code == 1
    report = {f["bdf"]: f for f in result.json()["functions"]}
    assert report[gone]["outcome"] == "failed"
    assert report[gone]["restored_to"] is None
    assert "hot-unplug" in (report[gone]["remedy"] or "")
    about = [w for w in kernel.writes if gone in w.path or w.data.strip() == gone]
    first_failed = next(i for i, w in enumerate(about) if w.error is not None)
    assert about[first_failed + 1 :] == [], "written to after it was found gone"
    assert report[other]["outcome"] == "changed"


def test_a_failed_bind_puts_pci_stub_back_without_leaving_its_override(
    kernel: FakeKernel,
) -> None:
    """engine:215: the undo that pins pci-stub with the override clears it again after."""
    (npu,) = npu_node(kernel, count=1)
    with_pci_stub(kernel)
    park_on_pci_stub(kernel, npu, keep_override=False)
    operator(kernel, "bus/pci/drivers/pci-stub/remove_id", "1eff 1220")
    found = state(kernel, npu)
    assert found == ("pci-stub", None)
    kernel.fail_probe("vfio-pci", npu, errno.EINVAL)
    result = invoke(kernel, "--timeout", "1", "bind-all", "--json")
    assert result.exit_code == 1
    (outcome,) = result.json()["functions"]
    assert outcome["outcome"] == "failed"
    assert state(kernel, npu) == found
    assert outcome["restored_to"] == "pci-stub (override unset)"


# -- the write count: writes that reached the kernel, not attempts -------------------------------
@pytest.mark.parametrize("blocker", ["a directory", "nothing"])
def test_a_write_whose_file_cannot_be_opened_is_not_counted(
    kernel: FakeKernel, blocker: str
) -> None:
    """The unbind file is a directory (EISDIR at open) or missing (ENOENT): no write syscall
    was made, so the report counts only the override set and cleared again."""
    (npu,) = npu_node(kernel, count=1)
    unbind = kernel.sys_path("bus/pci/drivers/rebellions/unbind")
    kernel.fs.remove_object(unbind)
    if blocker == "a directory":
        kernel.fs.create_dir(unbind)
    result = invoke(kernel, "bind-all", "--json")
    assert result.exit_code == 1, result.stdout
    (outcome,) = result.json()["functions"]
    assert outcome["outcome"] == "failed"
    assert state(kernel, npu) == ("rebellions", None)  # put back
    assert [w.path.rsplit("/", 1)[-1] for w in kernel.writes] == ["driver_override"] * 2
    assert outcome["writes"] == result.json()["writes"] == len(kernel.writes) == 2


# -- a write stuck in the kernel: the function is given up on, never written to again -----------
def _writes_about(kernel: FakeKernel, bdf: str) -> list[str]:
    """Writes that returned (a blocked one is logged when it returns)."""
    return [f"{w.path} {w.data.strip()}" for w in kernel.writes if named_bdf(w.path, w.data) == bdf]


@pytest.mark.parametrize("command", ["bind-all", "unbind-all"])
def test_a_stuck_step_is_followed_by_no_write_to_its_function(
    kernel: FakeKernel, command: str
) -> None:
    """An unbind that does not return (a VM holds the device): any undo would queue behind
    it in the kernel, so the run reports the function stuck and leaves the repair to the
    next run, which settles the journal record."""
    (npu,) = npu_node(kernel, count=1, driver="vfio-pci" if command == "unbind-all" else None)
    if command == "bind-all":
        operator(kernel, "bus/pci/drivers_probe", npu)  # on rebellions, found so
        kernel.clear_writes()
    gate = kernel.block_unbind(npu)
    try:
        result = invoke(kernel, "--timeout", "0.3", command, "--json")
        assert gate.entered.is_set()
        before_it = _writes_about(kernel, npu)  # the run is over: nothing came after it
    finally:
        gate.set()
    (outcome,) = result.json()["functions"]
    assert result.exit_code == 1
    assert outcome["outcome"] == "failed"
    assert outcome["step"] == "unbind"
    assert "did not return within" in outcome["reason"]
    override = "vfio-pci" if command == "bind-all" else ""
    assert before_it == [f"bus/pci/devices/{npu}/driver_override {override}"]
    assert outcome["writes"] == 2  # the stuck unbind counts: it lands when it returns
    rerun = invoke(kernel, "--timeout", "1", command)  # waits for the lock: the unbind returned
    assert rerun.exit_code == 0, rerun.stdout + rerun.stderr
    assert "journal:" in rerun.stdout


def test_a_stuck_undo_write_ends_the_undo(kernel: FakeKernel) -> None:
    """The undo of a failed return unbinds pci-stub, and that unbind sticks: nothing more is
    written to the function (no override put back behind it); it is reported stuck."""
    (npu,) = npu_node(kernel, count=1)
    with_pci_stub(kernel)
    park_on_pci_stub(kernel, npu, keep_override=False)
    operator(kernel, "bus/pci/drivers/pci-stub/remove_id", "1eff 1220")
    assert invoke(kernel, "bind-all").exit_code == 0  # its origin: pci-stub, no override
    kernel.clear_writes()
    override = f"bus/pci/devices/{npu}/driver_override"
    kernel.fail_next_write(override, errno.EINVAL, data="")  # the last step: clear the pin
    gates = []
    kernel.after_write(override, lambda: gates.append(kernel.block_unbind(npu)), data="")
    try:
        result = invoke(kernel, "--timeout", "0.3", "unbind-all", "--json")
        assert gates, kernel.writes
        assert gates[0].entered.is_set()
        before_it = _writes_about(kernel, npu)  # the run is over: nothing came after it
    finally:
        kernel.release_all()
    (outcome,) = result.json()["functions"]
    assert result.exit_code == 1
    assert outcome["outcome"] == "failed"
    assert "did not return within" in outcome["reason"]
    assert before_it[-2:] == [f"{override} ", f"{override} vfio-pci"]  # the undo's first write
    assert outcome["writes"] == len(before_it) + 1
    rerun = invoke(kernel, "--timeout", "1", "unbind-all")  # waits for the lock: it returned
    assert rerun.exit_code == 0, rerun.stdout + rerun.stderr


def test_an_undo_bind_that_sticks_is_not_followed_by_the_override_put_back(
    kernel: FakeKernel,
) -> None:
    """The undo pins pci-stub with the override for an explicit bind and puts the override
    back after it; when that bind does not return, the override is left as it is."""
    (npu,) = npu_node(kernel, count=1)
    with_pci_stub(kernel)
    park_on_pci_stub(kernel, npu, keep_override=False)
    operator(kernel, "bus/pci/drivers/pci-stub/remove_id", "1eff 1220")
    kernel.fail_probe("vfio-pci", npu, errno.EINVAL)  # the bind fails: the undo runs
    sysfs = Sysfs(kernel.sys_root, kernel.dev_root)
    verbs = Kernel(sysfs)
    binds: list[str] = []

    def bind(address: PciAddress, driver: str) -> None:
        binds.append(driver)
        if binds.count("pci-stub") == 2:  # pinned by the override: this one sticks
            raise DeadlineExceededError("bind did not return within 1s", bdf=str(address))
        Kernel.bind(verbs, address, driver)

    verbs.bind = bind  # type: ignore[method-assign]
    topology = read_topology(sysfs)
    plan = plan_to_vfio(topology, [topology.functions[PciAddress.parse(npu)]], selector=Selector())
    (outcome,) = (
        Engine(verbs, clock=FakeClock(0.0), sleep=FakeClock(0.0).sleep).apply(plan).outcomes
    )
    assert binds == ["vfio-pci", "pci-stub", "pci-stub"]
    assert outcome.result is Result.FAILED
    assert outcome.stuck
    assert _writes_about(kernel, npu)[-1] == f"bus/pci/devices/{npu}/driver_override pci-stub"
    assert kernel.override_of(npu) == "pci-stub"

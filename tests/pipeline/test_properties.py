"""Property-based test: random topologies, selections, commands and fault schedules.

Each example builds a fresh fake node (its own pyfakefs Patcher: function-scoped fixtures do
not reset between hypothesis examples) with 1-4 Rebellions NPU functions, each starting on
``rebellions``, unbound, or vfio-pci with the override (as the tool leaves them), some sharing
an IOMMU group with each other or with the host NIC on e1000e. It picks a selection
(``--device-id`` subset, or every device ID), a command (bind BDFs, bind-all, unbind BDFs,
unbind-all, bind optionally ``--with-group-peers``) and 0-3 faults (a failing write or a
hot-unplug on an override, unbind or probe path of a selected function), runs the CLI with
``--json`` and checks the invariant of the fault matrix:

- every function that still exists is in its start state or its target state (driver,
  override): never driverless with a stale vfio override unless it started that way;
- functions outside the command's scope (unselected, not named) and the host's own
  functions (NIC, disk, bridges) are untouched: no write names them, in its path or its data;
- the JSON summary agrees with the node: changed/converged => target, failed/refused =>
  start, and the driver it reports is the driver bound; a refused or converged function got
  no write; the refusals are exactly the ones the group rules predict (a group whose other
  member stays on a host driver cannot be handed over, peers or not); no journal record is
  left for a function that still exists; a function that vanished reports changed or
  converged only if it had finished writing before the unplug;
- the exit code is 0 exactly when every outcome is changed or converged; a non-transient
  errno that reached the kernel makes it 1; with only transient errnos (retried inside
  ``--timeout``), no unplug and no refusal, it is 0.
"""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pyfakefs.fake_filesystem_unittest import Patcher

from tests.harness import FakeKernel, Write
from tests.harness.topologies import (
    DISK_ROOT_PORT,
    HOST_BRIDGE,
    HOST_DISK,
    HOST_NIC,
    NPU_CLASS,
    REBELLIONS_VENDOR,
    npu_node,
)
from tests.support import HOST, VFIO, Run, State, invoke, named_bdf, state, state_dir
from vfio_manager.safety.journal import Journal

NPU_IDS = (0x1220, 0x1221, 0x1250)
STARTS: dict[str, State] = {"host": HOST, "unbound": (None, None), "vfio": VFIO}
NIC_GROUP = 1  # npu_node puts HOST_NIC (e1000e) alone in group 1
ERRNOS = {
    "EBUSY": errno.EBUSY,
    "ENODEV": errno.ENODEV,
    "EINVAL": errno.EINVAL,
    "EACCES": errno.EACCES,
    "EROFS": errno.EROFS,
    "EIO": errno.EIO,
}
TRANSIENT = frozenset({errno.EBUSY, errno.ENODEV})  # retried by the tool inside --timeout
COMMANDS = ("bind", "bind-all", "unbind", "unbind-all")
STEPS = ("override", "unbind", "probe")
TIMEOUT = ("--timeout", "1")
HOST_FUNCTIONS = (HOST_BRIDGE, HOST_NIC, DISK_ROOT_PORT, HOST_DISK)


@dataclass(frozen=True)
class Npu:
    device: int
    start: str  # key of STARTS
    group: Optional[int]  # 0..3: an NPU group shared by NPUs with the same number; None: NIC's


@dataclass(frozen=True)
class Fault:
    kind: str  # an ERRNOS key, or "disappear"
    step: str  # one of STEPS
    victim: int  # index into the scenario's NPUs (a selected one)


@dataclass(frozen=True)
class Scenario:
    npus: tuple[Npu, ...]
    device_ids: Optional[frozenset[int]]  # None: no --device-id (every device ID)
    command: str
    named: tuple[int, ...]  # indices named on the command line (bind / unbind)
    with_peers: bool
    faults: tuple[Fault, ...]

    def bdf(self, index: int) -> str:
        return f"0000:{index + 1:02x}:00.0"

    def selected(self, index: int) -> bool:
        return self.device_ids is None or self.npus[index].device in self.device_ids

    @property
    def to_vfio(self) -> bool:
        return self.command.startswith("bind")

    @property
    def target(self) -> State:
        return VFIO if self.to_vfio else HOST

    def start(self, index: int) -> State:
        return STARTS[self.npus[index].start]

    def iommu_group(self, index: int) -> int:
        group = self.npus[index].group
        return NIC_GROUP if group is None else 30 + group

    def argv(self) -> list[str]:
        argv = [self.command]
        if self.command in ("bind", "unbind"):
            argv += [self.bdf(i) for i in self.named]
        if self.with_peers:
            argv.append("--with-group-peers")
        for device in sorted(self.device_ids or ()):
            argv += ["--device-id", f"0x{device:04x}"]
        return [*argv, "--json"]

    def named_unselected(self) -> bool:
        return self.command in ("bind", "unbind") and any(not self.selected(i) for i in self.named)

    def scope(self) -> list[int]:
        """The indices the command plans for (its report lists exactly these)."""
        if self.command.endswith("-all"):
            return [i for i in range(len(self.npus)) if self.selected(i)]
        ordered = list(dict.fromkeys(self.named))
        if self.with_peers:
            # peers join when they are endpoints on a host driver in a named function's group
            # and match the selection (the NIC never does)
            for i in list(ordered):
                for j in range(len(self.npus)):
                    if (
                        j not in ordered
                        and self.iommu_group(j) == self.iommu_group(i)
                        and self.selected(j)
                        and self.npus[j].start == "host"
                    ):
                        ordered.append(j)
        return ordered

    def refused(self) -> set[int]:
        """The functions the group rules refuse (bind only): a blocker stays on a host driver."""
        if not self.to_vfio:
            return set()
        moving = set(self.scope())
        refused = set()
        for i in moving:
            group = self.iommu_group(i)
            if group == NIC_GROUP:
                refused.add(i)  # the NIC stays on e1000e
                continue
            for j in range(len(self.npus)):
                if (
                    j not in moving
                    and self.iommu_group(j) == group
                    and self.npus[j].start == "host"
                ):
                    refused.add(i)
        mates = set()
        for i in moving - refused:
            has_steps = self.start(i) != VFIO
            if has_steps and any(self.iommu_group(j) == self.iommu_group(i) for j in refused):
                mates.add(i)
        return refused | mates


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    count = draw(st.integers(1, 4))
    npus = tuple(
        Npu(
            device=draw(st.sampled_from(NPU_IDS)),
            start=draw(st.sampled_from(sorted(STARTS))),
            # mostly NPU groups (shared when two draw the same number), sometimes the NIC's
            group=draw(st.sampled_from([0, 1, 2, 3, 0, 1, 2, 3, None])),
        )
        for _ in range(count)
    )
    present = sorted({n.device for n in npus})
    device_ids = draw(
        st.one_of(
            st.none(),
            st.frozensets(st.sampled_from(present), min_size=1),
            st.frozensets(st.sampled_from(NPU_IDS), min_size=1),
        )
    )
    selected = [i for i in range(count) if device_ids is None or npus[i].device in device_ids]
    command = draw(st.sampled_from(COMMANDS))
    named: tuple[int, ...] = ()
    if command in ("bind", "unbind"):
        # mostly selected functions (the interesting runs); sometimes any, to hit the refusal
        biased = bool(selected) and draw(st.integers(0, 4)) > 0
        pool = selected if biased else list(range(count))
        named = tuple(draw(st.lists(st.sampled_from(pool), min_size=1, max_size=count + 1)))
    with_peers = command.startswith("bind") and draw(st.booleans())
    scenario = Scenario(npus, device_ids, command, named, with_peers, ())
    # victims: selected functions, mostly ones the command moves (so the faults fire)
    moving = [i for i in scenario.scope() if scenario.start(i) != scenario.target]
    biased = bool(moving) and draw(st.integers(0, 3)) > 0
    victims = moving if biased else selected
    if not victims:
        return scenario
    fault = st.builds(
        Fault,
        kind=st.sampled_from([*ERRNOS, "disappear"]),
        step=st.sampled_from(STEPS),
        victim=st.sampled_from(victims),
    )
    faults = tuple(draw(fault) for _ in range(draw(st.integers(0, 3))))
    return Scenario(npus, device_ids, command, named, with_peers, faults)


def _build(kernel: FakeKernel, scenario: Scenario) -> None:
    npu_node(kernel, count=0)  # drivers, vfio loaded, host bridge, NIC, NVMe disk
    for index, npu in enumerate(scenario.npus):
        port = f"0000:00:{0x02 + index:02x}.0"
        kernel.add_function(
            port,
            vendor=0x8086,
            device=0x7C70,
            pci_class=0x060400,
            driver="pcieport",
            iommu_group=20 + index,
            numa_node=0,
        )
        driver, override = scenario.start(index)
        kernel.add_function(
            scenario.bdf(index),
            vendor=REBELLIONS_VENDOR,
            device=npu.device,
            pci_class=NPU_CLASS,
            subsystem_vendor=REBELLIONS_VENDOR,
            subsystem_device=npu.device,
            revision=0x01,
            iommu_group=scenario.iommu_group(index),
            parent=port,
            numa_node=index % 2,
            driver=driver,
            driver_override=override,
        )


def _fault_path(scenario: Scenario, fault: Fault) -> str:
    if fault.step == "override":
        return f"bus/pci/devices/{scenario.bdf(fault.victim)}/driver_override"
    if fault.step == "unbind":
        return f"bus/pci/drivers/{'rebellions' if scenario.to_vfio else 'vfio-pci'}/unbind"
    return "bus/pci/drivers_probe"


def _arm(kernel: FakeKernel, scenario: Scenario) -> None:
    for fault in scenario.faults:
        path = _fault_path(scenario, fault)
        if fault.kind == "disappear":
            kernel.remove_function_on_write(path, scenario.bdf(fault.victim))
        else:
            # unbind and drivers_probe are shared files: the victim's own write fails,
            # whichever lane reaches the file first
            shared = fault.step != "override"
            victim = scenario.bdf(fault.victim) if shared else None
            kernel.fail_next_write(path, ERRNOS[fault.kind], data=victim)


def _pending(kernel: FakeKernel) -> set[str]:
    return {e.bdf or "?" for e in Journal(state_dir(kernel)).pending()}


@dataclass
class Observed:
    """What one run did, as the checks need it."""

    out: str
    report: dict[str, dict[str, Any]]
    written: dict[str, list[int]]  # BDF -> positions in kernel.writes of writes naming it
    unplug_at: dict[str, int]  # BDF -> position of the write that unplugged it
    pending: set[str]  # BDFs with a journal transition record left


def _observe(kernel: FakeKernel, scenario: Scenario, result: Run) -> Observed:
    out = result.stdout + result.stderr
    in_scope = {scenario.bdf(i) for i in scenario.scope()}
    # every write names a function in the command's scope, in its path or its data
    written: dict[str, list[int]] = {}
    for position, write in enumerate(kernel.writes):
        named = named_bdf(write.path, write.data)
        assert named in in_scope, f"write {write} names {named!r}, outside {sorted(in_scope)}"
        written.setdefault(named, []).append(position)
    report = {f["bdf"]: f for f in result.json()["functions"]}
    assert set(report) == in_scope, out
    # which unplug fired: the first write to an armed unplug path (faults do not re-arm)
    unplug_at: dict[str, int] = {}
    for fault in scenario.faults:
        if fault.kind == "disappear":
            path = _fault_path(scenario, fault)
            hits = [n for n, w in enumerate(kernel.writes) if w.path == path]
            if hits:
                unplug_at.setdefault(scenario.bdf(fault.victim), hits[0])
    return Observed(out, report, written, unplug_at, _pending(kernel))


def _check_function(kernel: FakeKernel, scenario: Scenario, index: int, seen: Observed) -> None:
    """The invariant for one NPU."""
    bdf, start, target = scenario.bdf(index), scenario.start(index), scenario.target
    outcome = seen.report.get(bdf)
    if not kernel.has_function(bdf):
        assert bdf in seen.unplug_at, f"{bdf} vanished without a fault"
        if outcome is not None and outcome["outcome"] in ("changed", "converged"):
            # only a function that had finished writing before the unplug may say so
            assert all(p < seen.unplug_at[bdf] for p in seen.written.get(bdf, [])), seen.out
        return
    now = state(kernel, bdf)
    if outcome is None:
        assert now == start, f"{bdf} was outside the command but moved to {now}"
        return
    status = outcome["outcome"]
    assert outcome["driver"] == now[0], f"{bdf}: reported on {outcome['driver']}, is {now}"
    assert now in (start, target), f"{bdf}: started {start}, target {target}, ended {now}"
    if status in ("changed", "converged"):
        assert now == target, f"{bdf} reported {status} but is in {now}"
    else:
        assert now == start, f"{bdf} reported {status} but is in {now}: {seen.out}"
        assert outcome["reason"], outcome
    assert bdf not in seen.pending, f"{bdf} {status}, journal record left: {seen.out}"
    if status in ("converged", "refused"):
        assert bdf not in seen.written, f"{bdf} was {status} but written: {seen.out}"
    if status == "converged":
        assert start == target
    refused = index in scenario.refused()
    assert (status == "refused") == refused, f"{bdf}: {status}, refusal predicted: {refused}"


def _check(kernel: FakeKernel, scenario: Scenario, result: Run) -> None:
    """Assert the invariant after one run."""
    out = result.stdout + result.stderr
    # the host's own functions are never touched, whatever happened
    assert kernel.driver_of(HOST_NIC) == "e1000e"
    assert kernel.driver_of(HOST_DISK) == "nvme"
    if scenario.named_unselected():
        # a named function outside the selection refuses the whole command before any write
        assert result.exit_code == 1, out
        assert kernel.writes == [], out
        for index in range(len(scenario.npus)):
            assert state(kernel, scenario.bdf(index)) == scenario.start(index)
        event("named an unselected function")
        return

    assert result.exit_code in (0, 1), out
    seen = _observe(kernel, scenario, result)
    for index in range(len(scenario.npus)):
        _check_function(kernel, scenario, index, seen)
    ok = all(o["outcome"] in ("changed", "converged") for o in seen.report.values())
    assert (result.exit_code == 0) == ok, out
    hard = any(w.error is not None and w.error not in TRANSIENT for w in kernel.writes)
    if hard:
        assert result.exit_code == 1, out  # a non-transient errno always fails a function
    elif not seen.unplug_at and not scenario.refused():
        assert result.exit_code == 0, out  # transient errnos are retried to success

    event(f"exit {result.exit_code}")
    for outcome in seen.report.values():
        event(f"outcome {outcome['outcome']}")
    for write in kernel.writes:
        if write.error is not None:
            event(f"fault fired: {errno.errorcode[write.error]}")
    if seen.unplug_at:
        event("fault fired: unplug")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
@example(  # the move's probe and the restore's probe both fail: the restore binds explicitly
    Scenario(
        npus=(Npu(0x1221, "host", 1), Npu(0x1220, "host", 0)),
        device_ids=frozenset({0x1221}),
        command="bind-all",
        named=(),
        with_peers=False,
        faults=(Fault("EINVAL", "probe", 0), Fault("EINVAL", "probe", 0)),
    )
)
@example(  # a group shared with the host NIC is refused, peers or not; the NIC is untouched
    Scenario(
        npus=(Npu(0x1220, "host", None), Npu(0x1250, "unbound", None), Npu(0x1220, "vfio", 2)),
        device_ids=None,
        command="bind",
        named=(0, 2),
        with_peers=True,
        faults=(),
    )
)
def test_random_topologies_selections_and_faults_keep_the_invariant(scenario: Scenario) -> None:
    with Patcher() as patcher:
        assert patcher.fs is not None
        kernel = FakeKernel(patcher.fs, release="6.1.0-test", iommu=True)
        try:
            _build(kernel, scenario)
            _arm(kernel, scenario)
            result = invoke(kernel, *TIMEOUT, *scenario.argv())
            _check(kernel, scenario, result)
        finally:
            kernel.close()
            # a write abandoned at its deadline must end inside the Patcher: later, it would
            # close its fake descriptor number with the real os.close
            for thread in threading.enumerate():
                if thread.name.startswith("vfio-manager:"):
                    thread.join(10)


# The first counterexample hypothesis found: the move fails at drivers_probe
# and the restore's own probe fails too. The restore stopped there and left the function
# driverless; it now writes the start driver's `bind`.
@pytest.mark.parametrize("command", ["bind-all", "unbind-all"])
def test_restore_binds_the_start_driver_when_its_probe_fails(
    kernel: FakeKernel, command: str
) -> None:
    start = HOST if command == "bind-all" else VFIO
    (bdf,) = npu_node(kernel, count=1, driver=start[0])
    kernel.fail_next_write("bus/pci/drivers_probe", errno.EINVAL)  # the move's probe
    kernel.fail_next_write("bus/pci/drivers_probe", errno.EINVAL)  # the restore's probe
    result = invoke(kernel, *TIMEOUT, command, "--json")
    assert result.exit_code == 1
    assert state(kernel, bdf) == start, result.stdout
    assert Write(f"bus/pci/drivers/{start[0]}/bind", bdf, None) in kernel.writes
    (outcome,) = result.json()["functions"]
    assert outcome["outcome"] == "failed"
    assert outcome["errno"] == "EINVAL"
    assert "could not restore" not in outcome["reason"]
    assert outcome["restored_to"].startswith(start[0])

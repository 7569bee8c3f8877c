"""The fault matrix: every command x every step x every fault keeps the invariant.

Invariant: every function ends in its start state or its target state (driver and override),
never driverless with a stale override; the exit code is 0 exactly when every function
reached its target; the JSON summary says, per function, which state it is in.
"""

from __future__ import annotations

import errno
from typing import Optional

import pytest

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import HOST, VFIO, State, invoke, states

ERRNOS = {
    "EBUSY": errno.EBUSY,
    "ENODEV": errno.ENODEV,
    "EINVAL": errno.EINVAL,
    "EACCES": errno.EACCES,
    "EROFS": errno.EROFS,
}
COMMANDS = ["bind", "bind-all", "unbind", "unbind-all"]
STEPS = ["override", "unbind", "probe"]
TIMEOUT = ("--timeout", "1")


def _step_path(step: str, bdf: str, to_vfio: bool) -> str:
    if step == "override":
        return f"bus/pci/devices/{bdf}/driver_override"
    if step == "unbind":
        return f"bus/pci/drivers/{'rebellions' if to_vfio else 'vfio-pci'}/unbind"
    return "bus/pci/drivers_probe"


def _prepare(kernel: FakeKernel, command: str) -> tuple[list[str], list[str], State, State]:
    bdfs = npu_node(kernel, count=2)
    to_vfio = command.startswith("bind")
    if not to_vfio:
        assert invoke(kernel, *TIMEOUT, "bind-all").exit_code == 0
        kernel.clear_writes()
    argv = [command, bdfs[0]] if command in ("bind", "unbind") else [command]
    start, target = (HOST, VFIO) if to_vfio else (VFIO, HOST)
    return bdfs, argv, start, target


def _check_invariant(
    kernel: FakeKernel,
    bdfs: list[str],
    moved: list[str],
    start: State,
    target: State,
    exit_code: int,
    report: dict[str, dict[str, Optional[str]]],
) -> None:
    end = states(kernel, bdfs)
    for bdf, now in end.items():
        assert now in (start, target), f"{bdf} ended in {now}: neither start nor target"
        if bdf not in moved:
            assert now == start, f"{bdf} was not asked to move but is in {now}"
        outcome = report.get(bdf)
        if outcome is not None:
            if outcome["outcome"] in ("changed", "converged"):
                assert now == target
            else:
                assert now == start, f"{bdf} failed but is not back at its start: {now}"
                assert outcome["reason"]
    all_there = all(end.get(b) == target for b in moved) and all(b in end for b in moved)
    assert (exit_code == 0) == all_there


@pytest.mark.parametrize("fault", [*ERRNOS, "disappear"])
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("command", COMMANDS)
def test_fault_keeps_every_function_in_start_or_target_state(
    kernel: FakeKernel, command: str, step: str, fault: str
) -> None:
    bdfs, argv, start, target = _prepare(kernel, command)
    victim = bdfs[0]
    path = _step_path(step, victim, command.startswith("bind"))
    if fault == "disappear":
        kernel.remove_function_on_write(path, victim)
    else:
        # unbind and drivers_probe are shared: fail the victim's write, whichever lane is first
        shared = step != "override"
        kernel.fail_next_write(path, ERRNOS[fault], data=victim if shared else None)
    result = invoke(kernel, *TIMEOUT, *argv, "--json")
    assert result.exit_code in (0, 1), result.stdout + result.stderr
    report = {f["bdf"]: f for f in result.json()["functions"]}
    moved = bdfs if command.endswith("-all") else [victim]
    _check_invariant(kernel, bdfs, moved, start, target, result.exit_code, report)
    if fault == "disappear":
        assert not kernel.has_function(victim)
        assert result.exit_code == 1
        assert "disappeared" in (report[victim]["reason"] or "")
    elif fault in ("EINVAL", "EACCES", "EROFS"):
        # not transient: the write is not retried, the function is put back
        assert result.exit_code == 1
        assert report[victim]["outcome"] == "failed"
        assert report[victim]["errno"] == fault or fault in (report[victim]["reason"] or "")
    else:
        # EBUSY/ENODEV are transient: retried inside the deadline, then the function moves
        assert result.exit_code == 0, result.stdout
    # whatever happened, no stale journal record is left behind
    rerun = invoke(kernel, *TIMEOUT, *argv, "--json")
    if fault != "disappear":
        assert rerun.exit_code == 0, rerun.stdout + rerun.stderr
        assert all(s == target for s in states(kernel, moved).values())


@pytest.mark.parametrize("command", COMMANDS)
def test_hanging_unbind_is_abandoned_at_the_deadline_and_settled_later(
    kernel: FakeKernel, command: str
) -> None:
    bdfs, argv, _start, target = _prepare(kernel, command)
    victim = bdfs[0]
    gate = kernel.block_unbind(victim)
    try:
        result = invoke(kernel, "--timeout", "0.3", *argv, "--json")
        assert gate.entered.is_set(), "the unbind never reached the kernel"
        assert not gate.is_set()
        assert result.exit_code == 1
        report = {f["bdf"]: f for f in result.json()["functions"]}
        assert "did not return within" in (report[victim]["reason"] or "")
        assert report[victim]["step"] == "unbind"
        if command.endswith("-all"):
            assert states(kernel, bdfs[1:]) == dict.fromkeys(bdfs[1:], target)
    finally:
        gate.set()  # the VM lets go: the kernel finishes the unbind
    rerun = invoke(kernel, "--timeout", "1", *argv)
    assert rerun.exit_code == 0, rerun.stdout + rerun.stderr
    moved = bdfs if command.endswith("-all") else [victim]
    assert all(s == target for s in states(kernel, moved).values())
    assert "journal:" in rerun.stdout  # the run says it settled the interrupted transition

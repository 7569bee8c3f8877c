"""The node lock through the CLI, and concurrent runs serialising on it.

pyfakefs turns flock into a no-op, so these tests keep the state directory (lock and
journal) on the real disk under tmp_path: the lock and journal modules are excluded from
pyfakefs' patching, while sysfs stays fake. (tmp_path must be requested before fs.)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import HOST, REAL_STATE, VFIO, invoke, states
from vfio_manager.kernel.drivers import Direction
from vfio_manager.pipeline import transition
from vfio_manager.pipeline.node import Node
from vfio_manager.pipeline.selection import Selector
from vfio_manager.safety.journal import Journal
from vfio_manager.safety.lock import NodeLock


@pytest.mark.parametrize("fs", REAL_STATE, indirect=True)
def test_a_held_lock_makes_writers_give_up_naming_the_holder(
    tmp_path: Path, fs: object, kernel: FakeKernel
) -> None:
    del fs
    (npu,) = npu_node(kernel, count=1)
    state_dir = str(tmp_path / "state")
    with NodeLock(state_dir, timeout=1):
        result = invoke(kernel, "--state-dir", state_dir, "--lock-timeout", "0.2", "bind-all")
        assert result.exit_code == 1
        assert f"PID {os.getpid()}" in result.stderr
        assert "gave up after 0.2s" in result.stderr
        assert "remedy:" in result.stderr
        assert kernel.writes == []
        # readers take no lock
        assert invoke(kernel, "--state-dir", state_dir, "status").exit_code == 0
        assert invoke(kernel, "--state-dir", state_dir, "bind-all", "--dry-run").exit_code == 0
    assert invoke(kernel, "--state-dir", state_dir, "bind-all").exit_code == 0
    assert states(kernel, [npu]) == {npu: VFIO}


@pytest.mark.parametrize("fs", REAL_STATE, indirect=True)
def test_eight_concurrent_runs_serialise(
    tmp_path: Path, fs: object, kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    del fs
    bdfs = npu_node(kernel, count=3)
    state_dir = str(tmp_path / "state")
    node = Node(
        sysfs_root=kernel.sys_root,
        dev_root=kernel.dev_root,
        host_root=kernel.host_root,
        proc_root=kernel.proc_root,
        state_dir=state_dir,
        timeout=5.0,
        writer="thread",
    )
    inside = 0
    overlap: list[int] = []
    guard = threading.Lock()
    real = transition._Run.result

    def counted(*args: object, **kwargs: object) -> transition.TransitionResult:
        nonlocal inside
        with guard:
            inside += 1
            overlap.append(inside)
        try:
            return real(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            with guard:
                inside -= 1

    monkeypatch.setattr(transition._Run, "result", counted)
    results: list[int] = []
    errors: list[BaseException] = []

    def worker(to_vfio: bool) -> None:
        try:
            direction = Direction.TO_VFIO if to_vfio else Direction.TO_HOST
            request = transition.TransitionRequest(Selector(), direction, load_modules=False)
            result = transition.run_transition(node, request)
            results.append(int(result.exit_code))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i % 2 == 0,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(results) == 8
    assert max(overlap) == 1, "two runs were inside the lock at once"
    assert results == [0] * 8
    end = states(kernel, bdfs)
    assert set(end.values()) <= {HOST, VFIO}
    assert len(set(end.values())) == 1  # each run moved all three: no mixed state
    assert Journal(state_dir).pending() == []

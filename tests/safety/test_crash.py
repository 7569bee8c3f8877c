"""Crash consistency: kill a multi-function run after every possible number of writes.

The kill is simulated by an exception that is not an Exception (nothing in the tool may
swallow it, as nothing can swallow SIGKILL), raised either just before write k+1 reaches the
kernel or just after write k took effect but before the tool saw it return. The next run must
converge the node and leave no pending journal record.
"""

from __future__ import annotations

import pytest

from tests.cli.conftest import invoke, state_dir
from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.safety.conftest import HOST, VFIO, states
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.safety.journal import Journal

COUNT = 3
WRITES_PER_RUN = 3 * COUNT  # override, unbind, probe per function


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no `except Exception` can absorb it."""


@pytest.fixture
def kill_after(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Arm with ``arm.append((k, after))``: the k+1-th write is killed (before or after)."""
    arm: list[tuple[int, bool]] = []
    real_write = Sysfs.write
    seen = [0]

    def write(self: Sysfs, path: str, data: str) -> None:
        if arm:
            k, after = arm[0]
            if seen[0] == k:
                arm.clear()
                if after:
                    real_write(self, path, data)
                raise Killed
            seen[0] += 1
        real_write(self, path, data)

    monkeypatch.setattr(Sysfs, "write", write)
    return arm


def _pending(kernel: FakeKernel) -> list[str]:
    return [e.bdf or "?" for e in Journal(state_dir(kernel)).pending()]


@pytest.mark.parametrize("after", [False, True], ids=["before-write", "after-write"])
@pytest.mark.parametrize("k", range(WRITES_PER_RUN))
def test_bind_all_killed_after_k_writes_converges_on_rerun(
    kernel: FakeKernel, kill_after: list[tuple[int, bool]], k: int, after: bool
) -> None:
    bdfs = npu_node(kernel, count=COUNT)
    kill_after.append((k, after))
    with pytest.raises(Killed):
        invoke(kernel, "bind-all")
    assert _pending(kernel), "the killed run left no journal record to recover from"
    rerun = invoke(kernel, "bind-all")
    assert rerun.exit_code == 0, rerun.stdout + rerun.stderr
    assert states(kernel, bdfs) == dict.fromkeys(bdfs, VFIO)
    assert _pending(kernel) == []
    assert "journal:" in rerun.stdout


@pytest.mark.parametrize("after", [False, True], ids=["before-write", "after-write"])
@pytest.mark.parametrize("k", range(WRITES_PER_RUN))
def test_unbind_all_killed_after_k_writes_converges_on_rerun(
    kernel: FakeKernel, kill_after: list[tuple[int, bool]], k: int, after: bool
) -> None:
    bdfs = npu_node(kernel, count=COUNT)
    assert invoke(kernel, "bind-all").exit_code == 0
    kill_after.append((k, after))
    with pytest.raises(Killed):
        invoke(kernel, "unbind-all")
    rerun = invoke(kernel, "unbind-all")
    assert rerun.exit_code == 0, rerun.stdout + rerun.stderr
    assert states(kernel, bdfs) == dict.fromkeys(bdfs, HOST)
    assert _pending(kernel) == []


@pytest.mark.parametrize("k", range(WRITES_PER_RUN))
def test_bind_killed_then_unbind_all_rolls_back(
    kernel: FakeKernel, kill_after: list[tuple[int, bool]], k: int
) -> None:
    """The other direction after a crash: the half-done bind is rolled back, and says so."""
    bdfs = npu_node(kernel, count=COUNT)
    kill_after.append((k, True))
    with pytest.raises(Killed):
        invoke(kernel, "bind-all")
    rerun = invoke(kernel, "unbind-all")
    assert rerun.exit_code == 0, rerun.stdout + rerun.stderr
    assert states(kernel, bdfs) == dict.fromkeys(bdfs, HOST)
    assert _pending(kernel) == []
    assert "rolling back the interrupted bind to vfio" in rerun.stdout

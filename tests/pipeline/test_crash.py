"""Crash consistency: kill a multi-function run after every possible number of writes.

The kill is simulated by an exception that is not an Exception (nothing in the tool may
swallow it, as nothing can swallow SIGKILL), raised either just before write k+1 reaches the
kernel or just after write k took effect but before the tool saw it return. The next run must
converge the node and leave no pending journal record.
"""

from __future__ import annotations

import threading
from typing import Optional

import pytest

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import HOST, VFIO, Killed, invoke, pending, states
from vfio_manager.kernel.sysfs import Sysfs

COUNT = 3
WRITES_PER_RUN = 3 * COUNT  # override, unbind, probe per function


class Kill:
    """The k+1-th write of the next run is killed (just before or just after it reaches the
    kernel). Functions in different IOMMU groups move side by side, so, like SIGKILL, the
    kill ends every lane: no write of any function is made after it, in that run."""

    def __init__(self) -> None:
        self.armed: Optional[tuple[int, bool]] = None
        self.seen = 0
        self.dead = False
        self.guard = threading.Lock()

    def run(self, kernel: FakeKernel, k: int, after: bool, *args: str) -> None:
        self.armed, self.seen, self.dead = (k, after), 0, False
        try:
            with pytest.raises(Killed):
                invoke(kernel, *args)
        finally:
            self.armed, self.dead = None, False

    def before(self) -> bool:
        """Called before each write: True when this write is the one to kill (after it ran,
        for an "after" kill); raises at once when the process is already dead."""
        with self.guard:
            if self.dead:
                raise Killed
            if self.armed is None:
                return False
            k, after = self.armed
            if self.seen == k:
                self.dead = True
                if not after:
                    raise Killed
                return True
            self.seen += 1
            return False


@pytest.fixture
def kill(monkeypatch: pytest.MonkeyPatch) -> Kill:
    killer = Kill()
    real_write = Sysfs.write

    def write(self: Sysfs, path: str, data: str, *, subject: Optional[str] = None) -> None:
        killed_after = killer.before()
        real_write(self, path, data, subject=subject)
        if killed_after:
            raise Killed

    monkeypatch.setattr(Sysfs, "write", write)
    return killer


@pytest.mark.parametrize("after", [False, True], ids=["before-write", "after-write"])
@pytest.mark.parametrize("k", range(WRITES_PER_RUN))
def test_bind_all_killed_after_k_writes_converges_on_rerun(
    kernel: FakeKernel, kill: Kill, k: int, after: bool
) -> None:
    bdfs = npu_node(kernel, count=COUNT)
    kill.run(kernel, k, after, "bind-all")
    assert pending(kernel), "the killed run left no journal record to recover from"
    rerun = invoke(kernel, "bind-all")
    assert rerun.exit_code == 0, rerun.stdout + rerun.stderr
    assert states(kernel, bdfs) == dict.fromkeys(bdfs, VFIO)
    assert pending(kernel) == []
    assert "journal:" in rerun.stdout


@pytest.mark.parametrize("after", [False, True], ids=["before-write", "after-write"])
@pytest.mark.parametrize("k", range(WRITES_PER_RUN))
def test_unbind_all_killed_after_k_writes_converges_on_rerun(
    kernel: FakeKernel, kill: Kill, k: int, after: bool
) -> None:
    bdfs = npu_node(kernel, count=COUNT)
    assert invoke(kernel, "bind-all").exit_code == 0
    kill.run(kernel, k, after, "unbind-all")
    rerun = invoke(kernel, "unbind-all")
    assert rerun.exit_code == 0, rerun.stdout + rerun.stderr
    assert states(kernel, bdfs) == dict.fromkeys(bdfs, HOST)
    assert pending(kernel) == []


@pytest.mark.parametrize("k", range(WRITES_PER_RUN))
def test_bind_killed_then_unbind_all_rolls_back(kernel: FakeKernel, kill: Kill, k: int) -> None:
    """The other direction after a crash: the half-done bind is rolled back, and says so."""
    bdfs = npu_node(kernel, count=COUNT)
    kill.run(kernel, k, True, "bind-all")
    rerun = invoke(kernel, "unbind-all")
    assert rerun.exit_code == 0, rerun.stdout + rerun.stderr
    assert states(kernel, bdfs) == dict.fromkeys(bdfs, HOST)
    assert pending(kernel) == []
    assert "rolling back the interrupted bind to vfio" in rerun.stdout

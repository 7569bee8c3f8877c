"""Behaviour tests written for mutants that survived the suite (docs/testing.md, "Mutation
testing"): each pins something a user would feel if that line of the product were wrong.

The mutant each test kills is named in its docstring (``python -m tools.mutants --only ID``).
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.safety.test_holders import PROC, add_process, failing
from tests.support import invoke, operator, park_on_pci_stub, state, with_pci_stub
from vfio_manager.safety.holders import scan_holders
from vfio_manager.safety.lock import LOCK_FILE_NAME, LockTimeoutError, NodeLock, read_holder
from vfio_manager.safety.writer import ChildWriter, Deadline, DeadlineExceededError, bounded

EVENT_WAIT = 5.0  # upper bound for event waits; never reached when the code is right


def test_a_function_gone_mid_transition_is_not_written_to_again(kernel: FakeKernel) -> None:
    """engine:181: a function unplugged by a write is reported as gone, not "restored".

    Putting it back would write to a device that is no longer there; the report would claim
    a restore and hide the hot-unplug remedy.
    """
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
    """engine:215: the undo that pins pci-stub with the override clears it again after.

    pci-stub without a dynamic ID only takes the function through ``driver_override``; an
    undo that left the override behind would return the function not as found (a later
    probe, or the next `unbind-all`, would see an override nobody set).
    """
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


def _stuck_write(writer: ChildWriter, fifo: Path) -> tuple[Callable[[], None], threading.Thread]:
    """A write of ours (to a FIFO nobody reads, as an unbind while a VM holds the device)
    that misses its deadline and stays in the kernel until released."""
    os.mkfifo(fifo)
    before = set(threading.enumerate())
    with pytest.raises(DeadlineExceededError):
        bounded(
            lambda: writer(str(fifo), b"0000:01:00.0"), Deadline(time.monotonic() + 0.02, "unbind")
        )
    (thread,) = [t for t in threading.enumerate() if t not in before]

    def release() -> None:
        with open(fifo, "rb") as reader:
            reader.read()

    return release, thread


def _free(state_dir: str, proc_root: Path) -> bool:
    try:
        with NodeLock(state_dir, timeout=0, proc_root=str(proc_root)):
            return True
    except LockTimeoutError:
        return False


def test_the_node_lock_is_kept_until_the_last_stuck_write_returns(tmp_path: Path) -> None:
    """deadline:6, deadline:19: the lock goes when the last write we gave up on returns.

    Released earlier, a next run would queue its writes behind the stuck one; never released,
    the daemon would keep the node locked for good after the VM lets go.
    """
    proc_root = tmp_path / "proc"
    (proc_root / str(os.getpid())).mkdir(parents=True)
    (proc_root / str(os.getpid()) / "stat").write_text(f"{os.getpid()} (python) S 1 2 3\n")
    state_dir = str(tmp_path / "state")
    with NodeLock(state_dir, timeout=0, proc_root=str(proc_root)) as lock:
        writer = lock.writer(threads=True)
        first, first_thread = _stuck_write(writer, tmp_path / "unbind-1")
        second, second_thread = _stuck_write(writer, tmp_path / "unbind-2")
    assert not _free(state_dir, proc_root), "released while two writes are stuck"
    first()
    first_thread.join(EVENT_WAIT)
    assert not _free(state_dir, proc_root), "released while a write is still stuck"
    second()
    second_thread.join(EVENT_WAIT)
    assert _free(state_dir, proc_root), "still held after every stuck write returned"


def test_a_write_after_the_deadline_gets_no_time_of_its_own() -> None:
    """deadline:56: an attempt started when the deadline has passed waits 0 s, not more.

    ``--timeout`` bounds a function's writes together; a floor on each attempt would let a
    hanging write hold the run (and the lock) past it.
    """
    release = threading.Event()
    what = "unbind 0000:01:00.0 from rebellions (late)"

    def hang(_path: str, _data: bytes) -> None:
        release.wait(EVENT_WAIT)

    writer = ChildWriter(threads=True, write=hang)
    before = set(threading.enumerate())
    try:
        with pytest.raises(DeadlineExceededError) as caught:
            bounded(lambda: writer("/x", b"1"), Deadline(10.0, what, clock=lambda: 10.5))
    finally:
        release.set()
        for thread in set(threading.enumerate()) - before:
            thread.join(EVENT_WAIT)  # leaves no pending write to the tests after this one
    assert "within 0s" in caught.value.message


def test_a_process_whose_descriptors_cannot_be_read_makes_the_scan_incomplete(
    fs: FakeFilesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """holders:69: a descriptor link denied to us (EACCES) is a process not inspected.

    The in-use check then warns that it may have missed a holder (run as root, hostPID)
    instead of declaring the group free on a partial look.
    """
    add_process(fs, 20, "qemu", {3: "/dev/vfio/9"})
    failing(monkeypatch, "readlink", {f"{PROC}/20/fd/3": errno.EACCES})
    scan = scan_holders(PROC, ["/dev/vfio/9"], self_pid=1)
    assert scan.holders == ()
    assert scan.unreadable == (20,)
    assert not scan.complete


def test_the_lock_names_the_command_that_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lock:16: the holder record is the command line as typed, program name first.

    It is what a waiter's "held by PID ... (...)" message shows the admin.
    """
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/vfio-manager", "bind-all", "--json"])
    state_dir = tmp_path / "state"
    with NodeLock(str(state_dir), timeout=0):
        recorded = (state_dir / LOCK_FILE_NAME).read_text()
    assert recorded == f"{os.getpid()}\nvfio-manager bind-all --json\n"


def test_a_holder_whose_proc_stat_cannot_be_read_is_still_named(tmp_path: Path) -> None:
    """lock:44: an unreadable /proc/PID/stat leaves the state unknown; it never raises.

    The holder only decorates the lock-timeout error; a crash there would replace "held by
    PID ..." and its remedy with a traceback.
    """
    proc_root = tmp_path / "proc"
    (proc_root / str(os.getpid())).mkdir(parents=True)  # running, but no stat file
    state_dir = tmp_path / "state"
    with NodeLock(str(state_dir), timeout=0, command="vfio-manager bind-all"):
        holder = read_holder(str(state_dir / LOCK_FILE_NAME), proc_root=str(proc_root))
    assert holder is not None
    assert (holder.pid, holder.command, holder.running) == (
        os.getpid(),
        "vfio-manager bind-all",
        True,
    )
    assert holder.state is None

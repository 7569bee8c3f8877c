"""The node lock and the daemon's presence lock on real files under tmp_path (pyfakefs makes
flock a no-op); through the CLI, the state directory is on the real disk and sysfs is fake.

Competing holders run in threads with separate NodeLock objects (separate open file
descriptions, so flock makes them conflict as two processes would). Nothing sleeps: waits
go through injected clocks or are bounded by events.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
from pathlib import Path

import pytest

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import HOST, REAL_STATE, VFIO, FakeClock, invoke, node_of, state, states
from vfio_manager.errors import VfioManagerError
from vfio_manager.kernel.drivers import Direction
from vfio_manager.pipeline import transition
from vfio_manager.pipeline.selection import Selector
from vfio_manager.safety.journal import Journal
from vfio_manager.safety.lock import (
    LOCK_FILE_NAME,
    DaemonPresence,
    DaemonRunningError,
    LockTimeoutError,
    NodeLock,
    daemon_running,
    read_holder,
)
from vfio_manager.safety.statedir import UnsafeStateDirError

EVENT_WAIT = 5.0  # upper bound for event waits; never reached when the code is right


@pytest.fixture
def proc_root(tmp_path: Path) -> Path:
    """A fake /proc holding only our own PID, so holder lookups never read the real one."""
    root = tmp_path / "proc"
    (root / str(os.getpid())).mkdir(parents=True)
    (root / str(os.getpid()) / "stat").write_text(f"{os.getpid()} (python (x)) S 1 2 3\n")
    return root


def test_creates_the_state_dir_0700_and_the_lock_file_0600(tmp_path: Path) -> None:
    state = tmp_path / "run" / "vfio-manager"
    with NodeLock(str(state), timeout=0, command="vfio-manager bind-all") as lock:
        assert lock.held
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        lock_file = state / LOCK_FILE_NAME
        assert stat.S_IMODE(lock_file.stat().st_mode) == 0o600
        assert lock_file.read_text() == f"{os.getpid()}\nvfio-manager bind-all\n"
    held_after: bool = lock.held  # a fresh read (mypy would keep the narrowing above)
    assert not held_after
    assert lock_file.read_text() == "", "the holder record is cleared on release"
    assert lock_file.exists(), "the lock file is never unlinked (a waiter may have it open)"


def test_release_is_idempotent_and_reacquire_works(tmp_path: Path) -> None:
    lock = NodeLock(str(tmp_path / "s"), timeout=0)
    lock.release()
    with lock:
        pass
    with lock:
        assert lock.held
    lock.release()


def test_one_object_is_not_reentrant(tmp_path: Path) -> None:
    with NodeLock(str(tmp_path / "s"), timeout=0) as lock, pytest.raises(RuntimeError):
        lock.acquire()


def test_second_holder_times_out_naming_the_first(tmp_path: Path, proc_root: Path) -> None:
    state = str(tmp_path / "s")
    clock = FakeClock(0.0)
    first = NodeLock(state, timeout=0, command="vfio-manager bind-all --timeout 30")
    second = NodeLock(
        state,
        timeout=2.0,
        clock=clock,
        sleep=clock.sleep,
        poll_interval=0.5,
        proc_root=str(proc_root),
    )
    with first, pytest.raises(LockTimeoutError) as caught:
        second.acquire()
    err = caught.value
    assert isinstance(err, VfioManagerError)
    assert f"PID {os.getpid()}" in err.message
    assert "vfio-manager bind-all --timeout 30" in err.message
    assert "2s" in err.message
    assert err.remedy is not None
    assert "--lock-timeout" in err.remedy
    assert err.holder is not None
    assert err.holder.pid == os.getpid()
    assert err.holder.running
    assert err.holder.state == "S"
    assert sum(clock.sleeps) == pytest.approx(2.0)
    assert all(s <= 0.5 for s in clock.sleeps)
    assert not second.held
    with second:  # free again once the first is released
        assert second.held


def test_timeout_zero_tries_exactly_once(tmp_path: Path, proc_root: Path) -> None:
    clock = FakeClock(0.0)
    state = str(tmp_path / "s")
    second = NodeLock(state, timeout=0, clock=clock, sleep=clock.sleep, proc_root=str(proc_root))
    with NodeLock(state, timeout=0), pytest.raises(LockTimeoutError):
        second.acquire()
    assert clock.sleeps == []


def test_timeout_says_when_the_holder_is_gone_from_proc(tmp_path: Path) -> None:
    state = tmp_path / "s"
    empty_proc = tmp_path / "proc"
    empty_proc.mkdir()
    clock = FakeClock(0.0)
    first = NodeLock(str(state), timeout=0, command="vfio-manager unbind-all")
    second = NodeLock(
        str(state), timeout=0, clock=clock, sleep=clock.sleep, proc_root=str(empty_proc)
    )
    with first, pytest.raises(LockTimeoutError) as caught:
        second.acquire()
    assert "no longer visible in /proc" in caught.value.message
    assert caught.value.remedy is not None
    assert "hostPID" in caught.value.remedy


def test_timeout_says_when_the_holder_is_stuck_in_the_kernel(
    tmp_path: Path, proc_root: Path
) -> None:
    (proc_root / str(os.getpid()) / "stat").write_text(f"{os.getpid()} (vfio-manager) D 1\n")
    state = str(tmp_path / "s")
    with NodeLock(state, timeout=0), pytest.raises(LockTimeoutError) as caught:
        NodeLock(state, timeout=0, proc_root=str(proc_root)).acquire()
    assert "stuck in the kernel" in caught.value.message
    assert caught.value.remedy is not None
    assert "stop the VM or process" in caught.value.remedy


def test_a_holder_with_a_thread_stuck_in_the_kernel_is_named_stuck(
    tmp_path: Path, proc_root: Path
) -> None:
    """The writer child waits for its write threads (S); the stuck one is in D."""
    task = proc_root / str(os.getpid()) / "task"
    for tid, letter in ((os.getpid(), "S"), (os.getpid() + 1, "D")):
        (task / str(tid)).mkdir(parents=True)
        (task / str(tid) / "stat").write_text(f"{tid} (vfio-manager) {letter} 1\n")
    state = str(tmp_path / "s")
    with NodeLock(state, timeout=0), pytest.raises(LockTimeoutError) as caught:
        NodeLock(state, timeout=0, proc_root=str(proc_root)).acquire()
    assert "stuck in the kernel" in caught.value.message
    assert caught.value.remedy is not None
    assert "stop the VM or process" in caught.value.remedy


def test_two_holders_in_threads_serialise(tmp_path: Path) -> None:
    """B polls while A holds the lock and gets it only after A releases."""
    state = str(tmp_path / "s")
    order: list[str] = []
    b_waiting = threading.Event()
    a_released = threading.Event()
    b_done = threading.Event()
    errors: list[BaseException] = []

    def b_sleep(seconds: float) -> None:
        b_waiting.set()
        a_released.wait(EVENT_WAIT)

    def run_b() -> None:
        try:
            with NodeLock(state, timeout=EVENT_WAIT * 4, sleep=b_sleep, command="B"):
                order.append("B in")
                order.append("B out")
        except Exception as exc:  # noqa: BLE001  # pragma: no cover - surfaced below
            errors.append(exc)
        finally:
            b_done.set()

    with NodeLock(state, timeout=0, command="A") as a:
        order.append("A in")
        thread = threading.Thread(target=run_b)
        thread.start()
        assert b_waiting.wait(EVENT_WAIT), "B never polled"
        assert not b_done.is_set()
        holder = read_holder(a.path)
        assert holder is not None
        assert holder.command == "A"
        order.append("A out")
    a_released.set()
    assert b_done.wait(EVENT_WAIT)
    thread.join(EVENT_WAIT)
    assert errors == []
    assert order == ["A in", "A out", "B in", "B out"]


def test_eight_threads_never_overlap(tmp_path: Path) -> None:
    """Eight lock objects: every critical section runs alone, and all of them run."""
    state = str(tmp_path / "s")
    released = threading.Condition()
    inside = 0
    max_inside = 0
    entered: list[int] = []
    errors: list[BaseException] = []
    guard = threading.Lock()

    def wait_for_release(seconds: float) -> None:
        with released:
            released.wait(timeout=seconds)

    def worker(n: int) -> None:
        nonlocal inside, max_inside
        try:
            with NodeLock(
                state,
                timeout=EVENT_WAIT * 6,
                sleep=wait_for_release,
                poll_interval=0.05,
                command=f"worker {n}",
            ):
                with guard:
                    inside += 1
                    max_inside = max(max_inside, inside)
                    entered.append(n)
                holder = read_holder(os.path.join(state, LOCK_FILE_NAME))
                assert holder is not None
                assert holder.command == f"worker {n}"
                with guard:
                    inside -= 1
            with released:
                released.notify_all()
        except Exception as exc:  # noqa: BLE001  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(EVENT_WAIT * 8)
    assert errors == []
    assert sorted(entered) == list(range(8))
    assert max_inside == 1


# -- state directory safety ------------------------------------------------------------------


def test_refuses_a_symlinked_state_dir(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    link = tmp_path / "state"
    link.symlink_to(real)
    with pytest.raises(UnsafeStateDirError) as caught:
        NodeLock(str(link), timeout=0).acquire()
    assert "symlink" in caught.value.message
    assert caught.value.remedy is not None
    assert not (real / LOCK_FILE_NAME).exists()


def test_refuses_a_dangling_symlink_state_dir(tmp_path: Path) -> None:
    link = tmp_path / "state"
    link.symlink_to(tmp_path / "missing")
    with pytest.raises(UnsafeStateDirError):
        NodeLock(str(link), timeout=0).acquire()
    assert not (tmp_path / "missing").exists()


def test_refuses_a_state_dir_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_text("")
    with pytest.raises(UnsafeStateDirError) as caught:
        NodeLock(str(path), timeout=0).acquire()
    assert "not a directory" in caught.value.message


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_refuses_a_group_or_world_writable_state_dir(tmp_path: Path, mode: int) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(mode)
    with pytest.raises(UnsafeStateDirError) as caught:
        NodeLock(str(state), timeout=0).acquire()
    assert "writable by group or others" in caught.value.message
    assert caught.value.remedy is not None
    assert str(state) in caught.value.remedy


def test_refuses_a_state_dir_owned_by_someone_else(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with pytest.raises(UnsafeStateDirError) as caught:
        NodeLock(str(state), timeout=0, uid=os.geteuid() + 1).acquire()
    assert "owned by UID" in caught.value.message


def test_accepts_an_existing_private_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)  # readable by others is fine; writable is not
    with NodeLock(str(state), timeout=0) as lock:
        assert lock.held


def test_refuses_a_symlinked_lock_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (state / LOCK_FILE_NAME).symlink_to(victim)
    with pytest.raises(UnsafeStateDirError) as caught:
        NodeLock(str(state), timeout=0).acquire()
    assert "symlink" in caught.value.message
    assert victim.read_text() == "precious\n"


def test_read_holder_tolerates_garbage(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    for content in (b"", b"\n", b"abc\n", b"-1\nx\n", b"\xff\xfe\n", b"99999999999999\n"):
        path.write_bytes(content)
        assert read_holder(str(path), proc_root=str(tmp_path)) is None
    assert read_holder(str(tmp_path / "missing")) is None
    path.write_bytes(b"12")  # a half-written record: the PID without its command
    holder = read_holder(str(path), proc_root=str(tmp_path))
    assert holder is not None
    assert (holder.pid, holder.command, holder.running) == (12, "", False)


# -- the daemon's presence lock ----------------------------------------------------------------
def test_daemon_running_follows_the_presence_lock(state_dir: Path) -> None:
    assert not daemon_running(str(state_dir))
    with DaemonPresence(str(state_dir)):
        assert daemon_running(str(state_dir))
        assert (state_dir / "daemon").read_text().startswith(f"{os.getpid()}\n")
    assert not daemon_running(str(state_dir))
    assert (state_dir / "daemon").read_text() == ""


def test_a_second_daemon_waits_then_names_the_first(state_dir: Path) -> None:
    clock = FakeClock()
    slept = clock.sleeps
    with DaemonPresence(str(state_dir)):
        second = DaemonPresence(str(state_dir), timeout=2.0, clock=clock, sleep=clock.sleep)
        with pytest.raises(DaemonRunningError, match=f"PID {os.getpid()}"):
            second.acquire()
    assert sum(slept) == pytest.approx(2.0)
    second.acquire()
    second.release()


def test_a_fifo_at_the_presence_path_is_not_a_daemon(state_dir: Path) -> None:
    os.mkfifo(state_dir / "daemon")
    assert not daemon_running(str(state_dir))
    with pytest.raises(UnsafeStateDirError):
        DaemonPresence(str(state_dir)).acquire()


# -- the node lock through the CLI; concurrent runs serialise on it ----------------------------
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
    node = node_of(kernel, state_dir, timeout=5.0)
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


@pytest.mark.parametrize("fs", REAL_STATE, indirect=True)
def test_the_lock_stays_held_while_a_write_is_stuck(
    tmp_path: Path, fs: object, kernel: FakeKernel
) -> None:
    del fs
    (npu,) = npu_node(kernel, count=1, driver="vfio-pci")
    state_args = ["--state-dir", str(tmp_path / "state")]
    gate = kernel.block_unbind(npu)
    stuck = invoke(kernel, *state_args, "--timeout", "0.3", "unbind-all")
    assert stuck.exit_code == 1
    assert "did not return" in stuck.stdout
    assert gate.entered.is_set()
    kernel.clear_writes()
    second = invoke(kernel, *state_args, "--lock-timeout", "0", "bind-all")
    assert second.exit_code == 1
    assert "holds" in second.stderr, second.stderr
    assert "stuck" in second.stderr, second.stderr
    assert kernel.writes == []  # nothing queued behind the stuck unbind
    gate.set()
    third = invoke(kernel, *state_args, "--lock-timeout", "5", "bind-all")
    assert third.exit_code == 0, third.stdout + third.stderr
    assert state(kernel, npu) == VFIO


# -- who holds the lock ------------------------------------------------------------------------
def test_the_lock_names_the_command_that_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lock:16: the holder record is the command line as typed, program name first."""
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/vfio-manager", "bind-all", "--json"])
    state_dir = tmp_path / "state"
    with NodeLock(str(state_dir), timeout=0):
        recorded = (state_dir / LOCK_FILE_NAME).read_text()
    assert recorded == f"{os.getpid()}\nvfio-manager bind-all --json\n"


def test_a_holder_whose_proc_stat_cannot_be_read_is_still_named(tmp_path: Path) -> None:
    """lock:44: an unreadable /proc/PID/stat leaves the state unknown; it never raises."""
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

"""The writer: deadlines and retries without real waiting (hangs are Events, time is a fake
clock), its children as real processes, and the node lock kept while a write is stuck.

A write goes to a child (a thread, as under the fake kernel, unless the test says processes)
and the caller stops waiting for its answer when the deadline passes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import FakeClock
from vfio_manager.errors import SysfsWriteError, VfioManagerError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.safety.lock import LockTimeoutError, NodeLock
from vfio_manager.safety.writer import (
    WRITE_THREAD,
    ChildWriter,
    Deadline,
    DeadlineExceededError,
    bounded,
    is_transient,
    retry_transient,
)

EVENT_WAIT = 5.0  # upper bound for event waits; never reached when the code is right
TINY = 0.02  # the only real wait: a deadline that is meant to expire


def kernel_error(code: int) -> SysfsWriteError:
    return SysfsWriteError.from_os_error(
        OSError(code, "x"), path="/sys/bus/pci/drivers/vfio-pci/bind", data="0000:03:00.0"
    )


class Flaky:
    """Fails with the given errnos in turn, then returns ``"ok"``."""

    def __init__(self, *codes: int) -> None:
        self.codes = list(codes)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.codes:
            raise kernel_error(self.codes.pop(0))
        return "ok"


def within(
    seconds: float, what: str = "write", bdf: str | None = None, step: str | None = None
) -> Deadline:
    return Deadline(time.monotonic() + seconds, what, bdf, step)


def writer_of(write: Callable[[str, bytes], None]) -> ChildWriter:
    """A writer whose children call ``write`` as the write syscall, its file open."""

    def opened_then(path: str, data: bytes, opened: Callable[[], object]) -> None:
        opened()
        write(path, data)

    return ChildWriter(threads=True, write=opened_then)


# -- the writer's deadline --------------------------------------------------------------------


def test_returns_the_result() -> None:
    assert bounded(lambda: 42, within(EVENT_WAIT, "probe")) == 42


def test_runs_off_the_calling_thread() -> None:
    seen: list[threading.Thread] = []
    writer = writer_of(lambda _path, _data: seen.append(threading.current_thread()))
    bounded(lambda: writer("/sys/bus/pci/drivers_probe", b"1"), within(EVENT_WAIT, "probe"))
    writer.close()
    assert seen[0] is not threading.current_thread()
    assert seen[0].daemon


def test_exceptions_propagate_unchanged() -> None:
    err = kernel_error(errno.EINVAL)

    def fn() -> None:
        raise err

    with pytest.raises(SysfsWriteError) as caught:
        bounded(fn, within(EVENT_WAIT, "bind"))
    assert caught.value is err


def test_an_errno_comes_back_from_the_child() -> None:
    def refuse(_path: str, _data: bytes) -> None:
        raise OSError(errno.EINVAL, "refused")

    writer = writer_of(refuse)
    with pytest.raises(OSError, match="Invalid argument") as caught:
        bounded(lambda: writer("/sys/x", b"1"), within(EVENT_WAIT))
    writer.close()
    assert caught.value.errno == errno.EINVAL


def test_a_hung_write_is_abandoned_not_awaited() -> None:
    started = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    def hang(_path: str, _data: bytes) -> None:
        started.set()
        release.wait(EVENT_WAIT)
        finished.set()

    writer = writer_of(hang)
    before = set(threading.enumerate())
    what = "unbind 0000:03:00.0 from vfio-pci"
    deadline = within(TINY, what, bdf="0000:03:00.0", step="unbind")
    with pytest.raises(DeadlineExceededError) as caught:
        bounded(lambda: writer("/sys/bus/pci/drivers/vfio-pci/unbind", b"0000:03:00.0"), deadline)
    err = caught.value
    assert isinstance(err, VfioManagerError)
    assert started.is_set()
    assert not finished.is_set(), "raised while the write is still blocked"
    assert (err.bdf, err.step) == ("0000:03:00.0", "unbind")
    assert what in err.message
    assert err.remedy is not None
    (pending,) = writer.stuck()
    assert "0000:03:00.0" in pending.what
    started_here = [t for t in threading.enumerate() if t not in before]
    assert all(t.daemon for t in started_here), "the interpreter exits without them"
    stuck = [t for t in started_here if t.name == WRITE_THREAD]
    assert len(stuck) == 1

    release.set()  # the holder lets go: the write returns and the child ends
    stuck[0].join(EVENT_WAIT)
    assert finished.is_set()
    assert writer.stuck() == []


def test_zero_timeout_still_returns_a_fast_result_or_raises() -> None:
    gate = threading.Event()

    def hang(_path: str, _data: bytes) -> None:
        gate.wait(EVENT_WAIT)

    writer = writer_of(hang)
    with pytest.raises(DeadlineExceededError):
        bounded(lambda: writer("/sys/x", b"1"), within(0, "hang"))
    gate.set()


def test_process_exits_despite_a_stuck_write() -> None:
    """The real thing: a process whose write never returns still exits promptly."""
    code = (
        "import threading, sys, time\n"
        "from vfio_manager.safety.writer import ChildWriter, Deadline, DeadlineExceededError,"
        " bounded\n"
        "writer = ChildWriter(threads=True, write=lambda p, d, o: threading.Event().wait())\n"
        "try:\n"
        "    bounded(lambda: writer('/x', b'1'), Deadline(time.monotonic() + 0.01, 'unbind'))\n"
        "except DeadlineExceededError:\n"
        "    sys.exit(7)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], timeout=60, check=False, capture_output=True
    )
    assert result.returncode == 7, result.stderr


# -- retry_transient --------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EBUSY, errno.EAGAIN, errno.ENODEV])
def test_transient_errnos_are_retried_with_backoff(code: int) -> None:
    clock = FakeClock(100.0)
    fn = Flaky(code, code, code)
    assert retry_transient(fn, deadline_at=clock() + 10, clock=clock, sleep=clock.sleep) == "ok"
    assert fn.calls == 4
    assert clock.sleeps == [0.05, 0.1, 0.2]


@pytest.mark.parametrize("code", [errno.EINVAL, errno.EACCES, errno.EROFS, errno.EIO])
def test_other_errnos_are_not_retried(code: int) -> None:
    clock = FakeClock(100.0)
    fn = Flaky(code)
    with pytest.raises(SysfsWriteError) as caught:
        retry_transient(fn, deadline_at=clock() + 10, clock=clock, sleep=clock.sleep)
    assert caught.value.errno == code
    assert fn.calls == 1
    assert clock.sleeps == []


def test_other_exceptions_are_not_retried() -> None:
    clock = FakeClock(100.0)
    calls = 0

    def fn() -> None:
        nonlocal calls
        calls += 1
        raise DeadlineExceededError("unbind hung")

    with pytest.raises(DeadlineExceededError):
        retry_transient(fn, deadline_at=clock() + 10, clock=clock, sleep=clock.sleep)
    assert calls == 1


def test_retries_stop_inside_the_deadline_with_the_kernels_error() -> None:
    clock = FakeClock(100.0)
    start = clock()
    fn = Flaky(*([errno.EBUSY] * 100))
    with pytest.raises(SysfsWriteError) as caught:
        retry_transient(fn, deadline_at=start + 2.0, clock=clock, sleep=clock.sleep)
    assert caught.value.errno == errno.EBUSY
    assert clock.now <= start + 2.0, "never waits past the deadline"
    assert clock.sleeps == [0.05, 0.1, 0.2, 0.4, 0.8]
    assert fn.calls == 6
    assert max(clock.sleeps) <= 1.0


def test_backoff_is_capped() -> None:
    clock = FakeClock(100.0)
    fn = Flaky(*([errno.EAGAIN] * 100))
    with pytest.raises(SysfsWriteError):
        retry_transient(fn, deadline_at=clock() + 10, clock=clock, sleep=clock.sleep)
    assert max(clock.sleeps) == 1.0
    assert clock.now <= 100.0 + 10


def test_past_deadline_means_one_attempt() -> None:
    clock = FakeClock(100.0)
    fn = Flaky(errno.EBUSY)
    with pytest.raises(SysfsWriteError):
        retry_transient(fn, deadline_at=clock() - 1, clock=clock, sleep=clock.sleep)
    assert fn.calls == 1


def test_is_transient() -> None:
    assert is_transient(kernel_error(errno.EBUSY))
    assert not is_transient(kernel_error(errno.EINVAL))
    assert not is_transient(OSError(errno.EBUSY, "not a SysfsWriteError"))


def test_bounded_retries_then_succeeds() -> None:
    clock = FakeClock(100.0)
    fn = Flaky(errno.ENODEV)
    result = bounded(fn, Deadline(clock() + EVENT_WAIT, "bind", clock=clock), sleep=clock.sleep)
    assert result == "ok"
    assert fn.calls == 2


def test_bounded_does_not_retry_a_hang() -> None:
    clock = FakeClock(100.0)
    release = threading.Event()
    calls = 0

    def hang(_path: str, _data: bytes) -> None:
        nonlocal calls
        calls += 1
        release.wait(EVENT_WAIT)

    writer = writer_of(hang)
    with pytest.raises(DeadlineExceededError):
        bounded(
            lambda: writer("/x", b"1"),
            Deadline(clock() + TINY, "unbind", clock=clock),
            sleep=clock.sleep,
        )
    release.set()
    assert calls == 1
    assert clock.sleeps == []


def test_tenacity_is_not_imported_until_a_write_is_retried() -> None:
    code = (
        "import errno, sys, time\n"
        "from vfio_manager.errors import SysfsWriteError\n"
        "from vfio_manager.safety import writer as deadline\n"
        "assert 'tenacity' not in sys.modules\n"
        "assert deadline.retry_transient(lambda: 1, deadline_at=time.monotonic() + 5) == 1\n"
        "assert 'tenacity' not in sys.modules, 'a write that succeeds at once needs no retry'\n"
        "calls = []\n"
        "def flaky():\n"
        "    calls.append(1)\n"
        "    if len(calls) < 3:\n"
        "        busy = OSError(errno.EBUSY, 'busy')\n"
        "        raise SysfsWriteError.from_os_error(busy, path='/x', data='1')\n"
        "    return 'ok'\n"
        "assert deadline.retry_transient(flaky, deadline_at=time.monotonic() + 5,\n"
        "                                sleep=lambda s: None) == 'ok'\n"
        "assert len(calls) == 3 and 'tenacity' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], timeout=60, check=False, capture_output=True
    )
    assert result.returncode == 0, result.stderr


# -- the writer's child as a real process; files in a temporary folder stand for sysfs --------
# Writes arrive from several threads at once (groups move side by side); the one child makes
# each from a thread of its own, so a write stuck in the kernel (a FIFO nobody reads, as an
# unbind while a VM holds the device) holds up no other and is named by ``stuck()``.
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def _until(condition: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Wait for a condition another thread makes true (bounded), not for a length of time."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@needs_fork
def test_a_write_goes_on_while_another_is_stuck(tmp_path: Path) -> None:
    fifo = tmp_path / "unbind"
    os.mkfifo(fifo)
    plain = tmp_path / "drivers_probe"
    plain.write_text("")
    writer = ChildWriter()
    stuck_done = threading.Event()
    errors: list[BaseException] = []

    def stuck_write() -> None:
        try:
            writer(str(fifo), b"0000:01:00.0")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            stuck_done.set()

    thread = threading.Thread(target=stuck_write, daemon=True)
    thread.start()
    try:
        _until(lambda: bool(writer.stuck()), "the FIFO write to reach its child")
        # the FIFO's open blocks in one of the child's threads; this write is made beside it
        writer(str(plain), b"0000:02:00.0")
        assert plain.read_text() == "0000:02:00.0"
        writer(str(plain), b"0000:03:00.0")
        assert plain.read_text() == "0000:03:00.0"
        assert not stuck_done.is_set()
        (stuck,) = writer.stuck()
        assert "0000:01:00.0" in stuck.what
        assert str(fifo) in stuck.what
        assert stuck.pid != os.getpid()
    finally:
        with open(fifo, "rb") as reader:  # the "VM" lets go: the stuck write completes
            assert reader.read() == b"0000:01:00.0"
        assert stuck_done.wait(30), "the stuck write never returned"
        writer.close()
    assert errors == []
    assert writer.stuck() == []  # its late answer closed it


@needs_fork
def test_writes_from_threads_at_once_each_arrive_once(tmp_path: Path) -> None:
    writer = ChildWriter()
    targets = [tmp_path / f"f{i}" for i in range(8)]
    for target in targets:
        target.write_text("")
    barrier = threading.Barrier(len(targets))

    def write(index: int) -> None:
        barrier.wait(timeout=30)
        writer(str(targets[index]), f"value {index}".encode())

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(targets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    writer.close()
    assert [t.read_text() for t in targets] == [f"value {i}" for i in range(len(targets))]
    assert writer.stuck() == []


@needs_fork
def test_one_child_makes_the_writes_of_every_lane_side_by_side(tmp_path: Path) -> None:
    """Lanes write at once (a probe can take seconds each): one forked child makes all their
    writes, each from a thread of its own. Each write here returns only once every other one
    has started, so writes made one after another would all fail."""
    lanes = 8
    targets = [tmp_path / f"driver_override.{i}" for i in range(lanes)]

    def write_when_all_started(path: str, payload: bytes, opened: Callable[[], object]) -> None:
        opened()
        Path(path).write_text(f"{payload.decode()} {os.getpid()}")
        deadline = time.monotonic() + EVENT_WAIT
        while not all(t.exists() for t in targets):
            if time.monotonic() > deadline:
                raise OSError(errno.ETIMEDOUT, "the other writes never started")
            time.sleep(0.005)

    writer = ChildWriter(write=write_when_all_started)
    barrier = threading.Barrier(lanes)
    errors: list[BaseException] = []

    def lane(index: int) -> None:
        barrier.wait(timeout=30)
        try:
            writer(str(targets[index]), f"vfio-pci.{index}".encode())
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(lanes)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        child = writer._child
    finally:
        writer.close()
    assert errors == []
    written = [t.read_text().split() for t in targets]
    assert [value for value, _pid in written] == [f"vfio-pci.{i}" for i in range(lanes)]
    assert child is not None
    assert {int(pid) for _value, pid in written} == {child.pid} != {os.getpid()}


def test_a_write_the_child_has_no_thread_for_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """No thread left in the child (a pids limit): that write is not made (EAGAIN, a
    transient errno), so it is retried within the deadline, and the child serves on."""
    written: list[bytes] = []
    writer = writer_of(lambda _path, data: written.append(data))
    start = threading.Thread.start
    refused: list[str] = []

    def start_once_refused(thread: threading.Thread) -> None:
        if thread.name == WRITE_THREAD and not refused:
            refused.append(thread.name)
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_once_refused)
    sysfs = Sysfs("/nonexistent/sys", transport=writer)  # the writes never reach a file
    attempts: list[int] = []

    def attempt() -> None:
        attempts.append(1)
        sysfs.write("/sys/bus/pci/drivers_probe", "0000:01:00.0", subject="0000:01:00.0")

    bounded(attempt, within(EVENT_WAIT), sleep=lambda _s: None)
    assert refused == [WRITE_THREAD]
    assert len(attempts) == 2
    assert written == [b"0000:01:00.0"]
    assert sysfs.writes_to("0000:01:00.0") == 1  # the refused attempt made no write
    refused.clear()
    with pytest.raises(SysfsWriteError) as caught:  # without retries: EAGAIN, nothing made
        sysfs.write("/sys/bus/pci/drivers_probe", "0000:02:00.0", subject="0000:02:00.0")
    assert caught.value.errno == errno.EAGAIN
    assert sysfs.writes_to("0000:02:00.0") == 0
    assert written == [b"0000:01:00.0"]
    writer.close()


@needs_fork
def test_a_writer_that_cannot_fork_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No process left (EAGAIN from fork, as under a pids limit): the write is not made, not
    counted, and the pipes made for the child are closed again."""
    sysfs, _fifo = _attribute_fifo(tmp_path)
    writer = ChildWriter()
    sysfs.transport = writer

    def no_fork() -> int:
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    monkeypatch.setattr(os, "fork", no_fork)
    open_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(SysfsWriteError, match="cannot start the writer process") as caught:
        sysfs.write_device_attr(PciAddress.parse("0000:01:00.0"), "driver_override", "x\n")
    assert caught.value.errno == errno.EAGAIN
    assert sysfs.writes_to("0000:01:00.0") == 0
    assert len(os.listdir("/proc/self/fd")) == open_before
    assert writer.close() == []


@needs_fork
def test_an_errno_comes_back_from_the_child_process(tmp_path: Path) -> None:
    writer = ChildWriter()
    try:
        with pytest.raises(OSError, match="No such file") as caught:
            writer(str(tmp_path / "missing" / "unbind"), b"0000:01:00.0")
        assert caught.value.errno == errno.ENOENT  # the answer, carried back from the child
    finally:
        writer.close()


@needs_fork
def test_a_write_past_its_deadline_is_abandoned_to_its_child(tmp_path: Path) -> None:
    """The caller stops waiting at the deadline; the child stays until its write returns,
    then exits (its answer refused), and is no longer named as stuck."""
    fifo = tmp_path / "unbind"
    os.mkfifo(fifo)
    writer = ChildWriter()
    deadline = Deadline(time.monotonic() + 0.05, "unbind 0000:01:00.0", "0000:01:00.0", "unbind")
    with pytest.raises(DeadlineExceededError, match="did not return within"):
        bounded(lambda: writer(str(fifo), b"0000:01:00.0"), deadline)
    (stuck,) = writer.close()
    assert stuck.pid != os.getpid()
    with open(fifo, "rb") as reader:  # the "VM" lets go
        assert reader.read() == b"0000:01:00.0"
    _until(lambda: writer.stuck() == [], "the abandoned child to exit")


# -- stuck writes and the node lock ------------------------------------------------------------
def _stuck_write(writer: ChildWriter, fifo: Path) -> tuple[Callable[[], None], threading.Thread]:
    """A write of ours (to a FIFO nobody reads, as an unbind while a VM holds the device)
    that misses its deadline and stays in the kernel until released."""
    os.mkfifo(fifo)
    before = set(threading.enumerate())
    with pytest.raises(DeadlineExceededError):
        bounded(
            lambda: writer(str(fifo), b"0000:01:00.0"), Deadline(time.monotonic() + 0.02, "unbind")
        )
    (thread,) = [t for t in threading.enumerate() if t not in before and t.name == WRITE_THREAD]

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
    """deadline:6, deadline:19: the lock goes when the last write we gave up on returns."""
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
    """deadline:56: an attempt started when the deadline has passed waits 0 s, not more."""
    release = threading.Event()
    what = "unbind 0000:01:00.0 from rebellions (late)"

    def hang(_path: str, _data: bytes) -> None:
        release.wait(EVENT_WAIT)

    writer = writer_of(hang)
    before = set(threading.enumerate())
    try:
        with pytest.raises(DeadlineExceededError) as caught:
            bounded(lambda: writer("/x", b"1"), Deadline(10.0, what, clock=lambda: 10.5))
    finally:
        release.set()
        for thread in set(threading.enumerate()) - before:
            thread.join(EVENT_WAIT)  # leaves no pending write to the tests after this one
    assert "within 0s" in caught.value.message


# -- the write count when a child dies: writes that reached the kernel --------------------------
def _attribute_fifo(tmp_path: Path) -> tuple[Sysfs, Path]:
    device = tmp_path / "sys" / "bus" / "pci" / "devices" / "0000:01:00.0"
    device.mkdir(parents=True)
    os.mkfifo(device / "driver_override")
    return Sysfs(str(tmp_path / "sys"), str(tmp_path / "dev")), device / "driver_override"


def _killed_mid_write(writer: ChildWriter, sysfs: Sysfs) -> SysfsWriteError:
    """Start a write in a thread, SIGKILL its child once it is in the kernel (its open or its
    write blocks), return what the write raised."""
    errors: list[BaseException] = []

    def write() -> None:
        try:
            sysfs.write_device_attr(PciAddress.parse("0000:01:00.0"), "driver_override", "x\n")
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    _until(lambda: bool(writer.stuck()), "the write to reach its child")
    time.sleep(0.2)  # the child is blocked in the kernel by now (open or write)
    (child,) = writer.stuck()
    os.kill(child.pid, signal.SIGKILL)  # an OOM kill
    thread.join(EVENT_WAIT)
    (error,) = errors
    assert isinstance(error, SysfsWriteError), error
    return error


@needs_fork
def test_a_child_killed_before_its_write_counts_no_write(tmp_path: Path) -> None:
    sysfs, _fifo = _attribute_fifo(tmp_path)  # nobody reads: the child's open blocks
    writer = ChildWriter()
    sysfs.transport = writer
    try:
        error = _killed_mid_write(writer, sysfs)
    finally:
        writer.close()
    assert error.errno == errno.EIO
    assert "died before its write" in error.message
    assert sysfs.writes_to("0000:01:00.0") == 0


@needs_fork
def test_a_child_killed_during_its_write_counts_it_unknown_as_made(tmp_path: Path) -> None:
    sysfs, fifo = _attribute_fifo(tmp_path)
    reader = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # opens at once; never read
    writer = ChildWriter()
    sysfs.transport = writer
    try:
        fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)
        os.write(reader, b"\0" * 4096)  # full: the child's write blocks in the kernel
        error = _killed_mid_write(writer, sysfs)
    finally:
        writer.close()
        os.close(reader)
    assert error.errno == errno.EIO
    assert "died during its write" in error.message  # its outcome is unknown
    assert sysfs.writes_to("0000:01:00.0") == 1


@needs_fork
def test_a_child_outlives_sigint_and_sigterm(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group, systemd's stop SIGTERMs the whole cgroup: the
    run decides when to stop (after the function in flight), so its children stay."""
    target = tmp_path / "driver_override"
    target.write_text("")
    writer = ChildWriter()
    try:
        writer(str(target), b"first")
        child = writer._child  # the child that made the first write
        assert child is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            os.kill(child.pid, sig)
        time.sleep(0.2)
        writer(str(target), b"second")  # the same child, still there
        assert writer._child is child
        assert target.read_text() == "second"
    finally:
        writer.close()

"""Exclusive ``flock`` locks on files of the state directory: the node lock and the daemon's.

The kernel drops a ``flock`` when its holder dies; the files are never unlinked (a waiter may
hold the old inode) and name their holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional, TypeVar

from vfio_manager.errors import VfioManagerError
from vfio_manager.kernel.procfs import DEFAULT_PROC_ROOT, Procfs
from vfio_manager.log import get_logger
from vfio_manager.safety.statedir import (
    DEFAULT_STATE_DIR,
    StateDir,
    UnsafeStateDirError,
    UnusableFile,
)

if TYPE_CHECKING:  # status imports this module (intents), not the writer
    from vfio_manager.safety.writer import ChildWriter

log = get_logger("vfio_manager.safety.lock")

LOCK_FILE_NAME = "lock"
PRESENCE_FILE_NAME = "daemon"
_HOLDER_READ_LIMIT = 4096
L = TypeVar("L", bound="FileLock")


class LockTimeoutError(VfioManagerError):
    """Another process held the node lock for longer than ``--lock-timeout``."""

    def __init__(self, message: str, *, holder: Optional[LockHolder], remedy: str) -> None:
        super().__init__(message, remedy=remedy, step="lock")
        self.holder = holder

    def details(self) -> dict[str, Any]:
        return {**super().details(), "holder": asdict(self.holder) if self.holder else None}


class DaemonRunningError(VfioManagerError):
    """Another daemon holds this node's state directory."""


@dataclass(frozen=True)
class LockHolder:
    """Who a lock file names; ``running`` and ``state`` (``D``: stuck) are /proc's, now."""

    pid: int
    command: str
    running: bool
    state: Optional[str] = None

    def describe(self) -> str:
        text = f"PID {self.pid} ({self.command or 'command unknown'})"
        if not self.running:
            return text + ", which is no longer visible in /proc"
        if self.state == "D":
            return text + ", which is stuck in the kernel (state D, uninterruptible)"
        return text


def command_line() -> str:
    """Our command line, as a shell would take it (for holder and intent records)."""
    import shlex

    return shlex.join([os.path.basename(sys.argv[0]) or "python", *sys.argv[1:]])


def read_holder(lock_path: str, *, proc_root: str = DEFAULT_PROC_ROOT) -> Optional[LockHolder]:
    """Who a lock file (``PID\ncommand\n``) names, if anyone; never raises."""
    directory, name = os.path.split(lock_path)
    try:
        state = StateDir.open_existing(directory or ".")
        if state is None:
            return None
        with state:
            data = state.read(name, limit=_HOLDER_READ_LIMIT, whole=False) or b""
    except (UnusableFile, UnsafeStateDirError, OSError):
        return None
    lines = data.decode("utf-8", "replace").split("\n")
    first = lines[0].strip()
    if not first.isdecimal() or len(first) > 10 or int(first) <= 0:
        return None
    pid = int(first)
    command = lines[1].strip() if len(lines) > 1 else ""
    proc_dir = Procfs(proc_root).pid_path(pid)
    if not os.path.isdir(proc_dir):
        return LockHolder(pid, command, False)
    letter = _state(os.path.join(proc_dir, "stat"))
    if letter != "D":  # a writer child writes from threads: one of them may be the stuck one
        with contextlib.suppress(OSError):
            tasks = os.listdir(os.path.join(proc_dir, "task"))
            if any(_state(os.path.join(proc_dir, "task", t, "stat")) == "D" for t in tasks):
                letter = "D"
    return LockHolder(pid, command, True, letter)


def _state(stat_path: str) -> Optional[str]:
    """The state letter of a /proc stat file (``PID (comm) S ...``), or ``None``."""
    try:
        with open(stat_path, encoding="utf-8", errors="replace") as f:
            text = f.read(_HOLDER_READ_LIMIT)
    except OSError:
        return None
    # comm may hold spaces and parentheses: split at the last ')'
    fields = text.rsplit(")", 1)[-1].split() if ")" in text else []
    return fields[0] if fields else None


def _write_holder(fd: int, pid: int, command: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{pid}\n{command.replace(chr(10), ' ')}\n".encode("utf-8", "replace"), 0)


def _unlock(fd: int) -> None:
    try:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the holder record goes with the lock
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def daemon_running(state_dir: str = DEFAULT_STATE_DIR) -> bool:
    """True while a daemon holds ``<state-dir>/daemon``; never creates nor blocks."""
    try:
        state = StateDir.open_existing(state_dir)
        if state is None:
            return False
        with state:
            fd = state.open_file(PRESENCE_FILE_NAME, os.O_RDONLY)
    except (UnsafeStateDirError, UnusableFile, OSError):
        return False
    if fd is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError as exc:
        return isinstance(exc, BlockingIOError)
    finally:
        os.close(fd)  # closing drops the probe's own lock


class FileLock:
    """An exclusive lock on ``state_dir/NAME``, waited for up to ``timeout`` seconds."""

    NAME: ClassVar[str]
    POLL_INTERVAL: ClassVar[float] = 0.1

    def __init__(
        self,
        state_dir: str = DEFAULT_STATE_DIR,
        *,
        timeout: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        poll_interval: Optional[float] = None,
        proc_root: str = DEFAULT_PROC_ROOT,
        command: Optional[str] = None,
        uid: Optional[int] = None,
    ) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, self.NAME)
        self.timeout = max(0.0, timeout)
        self.clock, self.sleep = clock, sleep
        self.poll_interval = self.POLL_INTERVAL if poll_interval is None else poll_interval
        self.proc_root, self.command, self.uid = proc_root, command, uid
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, polling until ``timeout``; raise :meth:`busy` then."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this lock")
        with StateDir.open(self.state_dir, uid=self.uid) as state:
            fd = state.open_lock_file(self.NAME)
        try:
            start, waiting = self.clock(), False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    remaining = self.timeout - (self.clock() - start)
                    if remaining <= 0:
                        raise self.busy(read_holder(self.path, proc_root=self.proc_root)) from None
                    if not waiting:
                        holder = read_holder(self.path, proc_root=self.proc_root)
                        who = holder.describe() if holder is not None else "another process"
                        log.info("waiting for the lock", path=self.path, holder=who)
                        waiting = True
                    self.sleep(min(self.poll_interval, remaining))
            try:
                command = self.command if self.command is not None else command_line()
                _write_holder(fd, os.getpid(), command)
            except OSError as exc:  # only a decoration: the lock itself is held
                log.warning("lock holder not recorded", path=self.path, error=exc.strerror)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        log.debug("lock acquired", path=self.path)

    def release(self) -> None:
        """Clear the holder record, unlock, close (if held)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            _unlock(fd)
            log.debug("lock released", path=self.path)

    def busy(self, holder: Optional[LockHolder]) -> VfioManagerError:
        """The error for a lock another process kept past ``timeout``."""
        raise NotImplementedError

    def __enter__(self: L) -> L:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class NodeLock(FileLock):
    """``state_dir/lock``, held by every writing run from its first read to its last write."""

    NAME = LOCK_FILE_NAME
    _writer: Optional[ChildWriter] = None

    def writer(self, *, threads: bool = False) -> ChildWriter:
        """The writer whose children inherit this lock: one per holding, closed at release."""
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not held")
        from vfio_manager.safety.writer import ChildWriter

        self._writer = self._writer or ChildWriter(keep_fds=[self._fd], threads=threads)
        return self._writer

    def release(self) -> None:
        """Release, unless a write we gave up on is still in the kernel (a next run would
        queue behind it): then its child keeps the lock, named as the holder."""
        writer, self._writer = self._writer, None
        stuck = writer.close() if writer is not None else []
        fd = self._fd
        if not stuck or writer is None or fd is None:
            super().release()
            return
        self._fd = None
        with contextlib.suppress(OSError):
            _write_holder(fd, stuck[0].pid, f"vfio-manager writer (stuck: {stuck[0].what})")
        log.warning(
            "lock kept by a stuck write",
            path=self.path,
            step="lock",
            outcome="held",
            pid=stuck[0].pid,
            what=stuck[0].what,
        )
        if writer.threads:  # a thread inherits nothing: unlock when its write returns
            writer.when_returned(lambda: _unlock(fd))
        else:  # each stuck child holds a copy; the kernel unlocks when the last one exits
            os.close(fd)

    def busy(self, holder: Optional[LockHolder]) -> LockTimeoutError:
        who = holder.describe() if holder is not None else "another process (it did not say who)"
        remedy = (
            "wait for it to finish and retry, or raise --lock-timeout; "
            "never remove the lock file (the kernel releases it when the holder exits)"
        )
        if holder is not None and holder.state == "D":
            remedy = (
                "it waits for a device to be let go: stop the VM or process that holds the "
                "device (see `vfio-manager status`), then retry"
            )
        elif holder is not None and not holder.running:
            remedy = (
                f"a child of PID {holder.pid} may have inherited the lock, or it runs in "
                "another PID namespace (give the pod hostPID); find it with "
                f"`fuser -v {self.path}`, then retry"
            )
        log.warning("lock timeout", path=self.path, holder=who, timeout=self.timeout)
        return LockTimeoutError(
            f"another vfio-manager run holds {self.path}: {who}; gave up after {self.timeout:g}s",
            holder=holder,
            remedy=remedy,
        )


class DaemonPresence(FileLock):
    """``state_dir/daemon``, held by the daemon for its whole life."""

    NAME = PRESENCE_FILE_NAME
    POLL_INTERVAL = 0.5

    def busy(self, holder: Optional[LockHolder]) -> DaemonRunningError:
        who = holder.describe() if holder is not None else "another process"
        return DaemonRunningError(
            f"another vfio-manager daemon is running on this node: {who}",
            path=self.path,
            remedy="run one daemon per node (a DaemonSet or a systemd unit, not both); "
            "stop the other one, or wait for it to exit",
        )

"""One writer per node: an exclusive ``flock`` on a file in the state directory.

Two vfio-manager processes writing to the same functions at once (a DaemonSet's new pod and
the old pod's preStop hook, an operator's manual run) interleave ``driver_override`` and
``unbind`` writes and leave functions half moved. Every command that writes therefore holds
:class:`NodeLock` for its whole run; read-only commands take no lock, so ``status`` never
waits.

Why ``flock`` on a file that is never deleted:

* the kernel drops the lock when the holder's last descriptor closes, so a killed run never
  leaves a stale lock behind (a PID file alone would need guessing whether its PID is ours);
* unlinking a lock file on release races with a waiter that already opened the old inode,
  so the file stays and only its content (who holds it) is cleared on release.

The state directory (default ``/run/vfio-manager``: tmpfs, gone at reboot, like the binding
state it describes) must be a real directory owned by us and writable by nobody else, and
the lock file a regular file of ours: both are opened and checked by the state directory's
gateway (:mod:`vfio_manager.safety.statedir`), so nobody can aim our writes elsewhere with a
symlink, nor hang a run with a FIFO.

The holder writes its PID and command line into the lock file after acquiring it, so a
waiter that gives up can say who holds the node and whether that process is still running
(or is stuck in the kernel, in an unbind that waits for a device to be let go).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Optional

from vfio_manager.errors import VfioManagerError
from vfio_manager.kernel.procfs import DEFAULT_PROC_ROOT, Procfs
from vfio_manager.log import get_logger
from vfio_manager.safety.deadline import (
    DEFAULT_LOCK_TIMEOUT,
    pending_writes,
    when_writes_return,
)
from vfio_manager.safety.statedir import (
    DEFAULT_STATE_DIR,
    StateDir,
    UnsafeStateDirError,
    UnusableFile,
)

if TYPE_CHECKING:  # imported by child_writer(): only a run that writes needs it
    from vfio_manager.safety.writer import ChildWriter

log = get_logger("vfio_manager.safety.lock")

LOCK_FILE_NAME = "lock"
_POLL_INTERVAL = 0.1
_HOLDER_READ_LIMIT = 4096


class LockTimeoutError(VfioManagerError):
    """Another process held the node lock for longer than ``--lock-timeout``."""

    def __init__(self, message: str, *, holder: Optional[LockHolder], remedy: str) -> None:
        super().__init__(message, remedy=remedy, step="lock")
        self.holder = holder

    def details(self) -> dict[str, Any]:
        holder = self.holder
        return {**super().details(), "holder": None if holder is None else asdict(holder)}


@dataclass(frozen=True)
class LockHolder:
    """Who wrote the lock file: PID and command line, and what /proc says about that PID now.

    ``running`` is False when /proc/PID is gone (the lock is then held by a descendant that
    inherited the descriptor, or the PID is from another PID namespace: in Kubernetes the pod
    needs hostPID to see other pods' processes). ``state`` is the one-letter process state
    from /proc/PID/stat; ``D`` means stuck in the kernel, typically an unbind waiting for a
    VM or process to release the device.
    """

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


def _default_command() -> str:
    import shlex

    return shlex.join([os.path.basename(sys.argv[0]) or "python", *sys.argv[1:]])


def read_holder(lock_path: str, *, proc_root: str = DEFAULT_PROC_ROOT) -> Optional[LockHolder]:
    """Parse the lock file (``PID\ncommand\n``) and look the PID up in ``proc_root``.

    ``None`` when the file is empty (released), does not start with a PID, or is not a
    regular file of ours in a safe directory (read through the state directory's gateway:
    a FIFO there never blocks); a half-written file is read as far as it goes. Never
    raises: this only decorates an error message.
    """
    directory, name = os.path.split(lock_path)
    return _holder_in(directory or ".", name, uid=None, proc_root=proc_root)


def _holder_in(
    state_dir: str, name: str, *, uid: Optional[int], proc_root: str
) -> Optional[LockHolder]:
    try:
        state = StateDir.open_existing(state_dir, uid=uid)
        if state is None:
            return None
        with state:
            data = state.read(name, limit=_HOLDER_READ_LIMIT, whole=False)
    except (UnusableFile, UnsafeStateDirError, OSError):
        return None
    return _parse_holder(data, proc_root) if data is not None else None


def _read_small(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(_HOLDER_READ_LIMIT)
    except OSError:
        return None


def _parse_holder(data: bytes, proc_root: str) -> Optional[LockHolder]:
    lines = data.decode("utf-8", "replace").split("\n")
    first = lines[0].strip()
    if not first.isdecimal() or len(first) > 10 or int(first) <= 0:
        return None
    pid = int(first)
    command = lines[1].strip() if len(lines) > 1 else ""
    proc_dir = Procfs(proc_root).pid_path(pid)
    running = os.path.isdir(proc_dir)
    state: Optional[str] = None
    if running:
        # "PID (comm) S ...": comm may hold spaces and parentheses; split at the last ')'
        text = _read_small(os.path.join(proc_dir, "stat"))
        fields = text.rsplit(")", 1)[-1].split() if text and ")" in text else []
        state = fields[0] if fields else None
    return LockHolder(pid, command, running, state)


class NodeLock:
    """Exclusive, bounded-wait lock on ``STATE_DIR/lock``; use it as a context manager.

    ``timeout`` is how long to wait for another holder (0: try once). ``clock`` and ``sleep``
    are injectable so tests never wait for real; ``command`` (default: our argv) and ``uid``
    (default: our effective UID, the owner the state directory must have) likewise.

    Locks taken through two ``NodeLock`` objects conflict even inside one process (each has
    its own open file description), which is what lets tests run competing holders in
    threads. One object is not re-entrant: acquiring it twice is a programming error.
    """

    def __init__(
        self,
        state_dir: str = DEFAULT_STATE_DIR,
        *,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        poll_interval: float = _POLL_INTERVAL,
        proc_root: str = DEFAULT_PROC_ROOT,
        command: Optional[str] = None,
        uid: Optional[int] = None,
    ) -> None:
        self.state_dir = state_dir
        self.timeout = max(0.0, timeout)
        self.clock = clock
        self.sleep = sleep
        self.poll_interval = poll_interval
        self.proc_root = proc_root
        self.command = command
        self.uid = uid
        self._fd: Optional[int] = None
        self._writer: Optional[ChildWriter] = None

    @property
    def path(self) -> str:
        return os.path.join(self.state_dir, LOCK_FILE_NAME)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> Optional[LockHolder]:
        """Who the lock file says holds the lock (``None`` when nobody wrote it)."""
        return _holder_in(self.state_dir, LOCK_FILE_NAME, uid=self.uid, proc_root=self.proc_root)

    # -- acquire / release ---------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lock, polling until ``timeout``; raise :class:`LockTimeoutError`."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this NodeLock")
        fd = self._open()
        try:
            self._wait(fd)
            self._write_holder(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        log.debug("lock acquired", path=self.path)

    @property
    def fd(self) -> Optional[int]:
        """The lock's descriptor while held (a writer child inherits it, see release)."""
        return self._fd

    def child_writer(self) -> ChildWriter:
        """A writer whose children inherit this lock; :meth:`release` minds its stuck ones."""
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not held")
        from vfio_manager.safety.writer import ChildWriter

        self._writer = ChildWriter(keep_fds=[self._fd])
        return self._writer

    def release(self) -> None:
        """Clear the holder record, unlock, close. Safe to call when not held.

        Not while a write we gave up on is still in the kernel: a next run would queue its
        writes behind it. A stuck writer child keeps the lock through the descriptor it
        inherited (we only close ours and name it in the holder record); a stuck thread of
        ours keeps it until its write returns, then the lock is released.
        """
        fd, self._fd = self._fd, None
        writer, self._writer = self._writer, None
        if fd is None:
            return
        stuck = writer.stuck() if writer is not None else []
        if writer is not None:
            writer.close()
        if stuck:
            self._record_holder(fd, stuck[0].pid, f"vfio-manager writer: {stuck[0].what}")
            os.close(fd)
            log.warning(
                "lock kept by a stuck write",
                path=self.path,
                step="lock",
                outcome="held",
                pid=stuck[0].pid,
                what=stuck[0].what,
            )
            return
        pending = pending_writes()
        if pending:
            self._record_holder(fd, os.getpid(), f"vfio-manager (stuck: {pending[0]})")
            log.warning("lock kept by a stuck write", path=self.path, step="lock", what=pending)
        if when_writes_return(lambda: self._unlock(fd)):
            log.debug("lock released", path=self.path)

    @staticmethod
    def _unlock(fd: int) -> None:
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @staticmethod
    def _record_holder(fd: int, pid: int, command: str) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{pid}\n{command.replace(chr(10), ' ')}\n".encode(), 0)

    def __enter__(self) -> NodeLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.release()

    # -- internals -------------------------------------------------------------------------
    def _open(self) -> int:
        with StateDir.open(self.state_dir, uid=self.uid) as state:
            return state.open_lock_file(LOCK_FILE_NAME)

    def _wait(self, fd: int) -> None:
        start = self.clock()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                return
            remaining = self.timeout - (self.clock() - start)
            if remaining <= 0:
                raise self._timeout_error(fd)
            self.sleep(min(self.poll_interval, remaining))

    def _timeout_error(self, fd: int) -> LockTimeoutError:
        try:
            data = os.pread(fd, _HOLDER_READ_LIMIT, 0)
        except OSError:
            data = b""
        holder = _parse_holder(data, self.proc_root)
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

    def _write_holder(self, fd: int) -> None:
        """Record who we are; a failure here is only logged (the lock itself is held)."""
        command = self.command if self.command is not None else _default_command()
        text = f"{os.getpid()}\n{command.replace(chr(10), ' ')}\n"
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode("utf-8", "replace"), 0)
        except OSError as exc:
            log.warning("lock holder not recorded", path=self.path, error=exc.strerror)


__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_STATE_DIR",
    "LOCK_FILE_NAME",
    "LockHolder",
    "LockTimeoutError",
    "NodeLock",
    "UnsafeStateDirError",
    "read_holder",
]

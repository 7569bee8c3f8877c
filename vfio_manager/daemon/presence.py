"""Whether a daemon is up on this node: an ``flock`` it holds on ``<state-dir>/daemon``.

Why: ``unbind`` records an intent only while a daemon is up (otherwise there is nobody to
tell, and a daemon started later would silently keep the function on the host); and two
daemons on one node (a DaemonSet and a systemd unit, or a rolling update's two pods) would
re-plan the same functions against each other, so the second one waits for the first to go.

Why ``flock`` (like the node lock, and a separate file from it, since the daemon holds the
node lock only while it reconciles): the kernel releases it when the daemon dies however it
dies, so a ``SIGKILL`` never leaves a stale "daemon is up". The holder writes its PID and
command line into the file so a second daemon can name the first.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import fcntl
import os
import shlex
import stat
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Optional

from vfio_manager.errors import VfioManagerError
from vfio_manager.log import get_logger
from vfio_manager.safety.lock import DEFAULT_STATE_DIR, read_holder
from vfio_manager.safety.statedir import UnsafeStateDirError, open_state_dir

log = get_logger("vfio_manager.daemon.presence")

PRESENCE_FILE_NAME = "daemon"
_POLL_INTERVAL = 0.5


class DaemonRunningError(VfioManagerError):
    """Another daemon holds this node's state directory."""


def daemon_running(state_dir: str = DEFAULT_STATE_DIR) -> bool:
    """True while a daemon holds ``<state-dir>/daemon``; never creates or blocks.

    Probes with a non-blocking shared lock, released at once. A missing file, a symlink or
    anything unreadable means no daemon (a daemon always creates it as a regular file).
    """
    path = os.path.join(state_dir, PRESENCE_FILE_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class DaemonPresence:
    """Held by the daemon for its whole life; ``acquire`` waits up to ``timeout`` for another.

    A rolling update starts the new pod while the old one runs its preStop hook; waiting a
    while (rather than failing at once) lets the handover happen without a crash loop.
    """

    def __init__(
        self,
        state_dir: str = DEFAULT_STATE_DIR,
        *,
        timeout: float = 0.0,
        uid: Optional[int] = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.state_dir = state_dir
        self.timeout = max(0.0, timeout)
        self.uid = uid
        self.clock = clock
        self.sleep = sleep
        self._fd: Optional[int] = None

    @property
    def path(self) -> str:
        return os.path.join(self.state_dir, PRESENCE_FILE_NAME)

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this DaemonPresence")
        fd = self._open()
        try:
            start = self.clock()
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    remaining = self.timeout - (self.clock() - start)
                    if remaining <= 0:
                        raise self._running_error() from None
                    self.sleep(min(_POLL_INTERVAL, remaining))
            command = shlex.join([os.path.basename(sys.argv[0]) or "python", *sys.argv[1:]])
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n{command}\n".encode("utf-8", "replace"), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> DaemonPresence:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.release()

    def _open(self) -> int:
        dir_fd = open_state_dir(self.state_dir, uid=self.uid)
        try:
            fd = os.open(
                PRESENCE_FILE_NAME,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
        except OSError as exc:
            raise UnsafeStateDirError(
                f"cannot open {self.path}: {exc.strerror}",
                path=self.path,
                errno=exc.errno,
                remedy=f"remove {self.path} if it is a symlink or not a file; it is recreated"
                if exc.errno in (errno_mod.ELOOP, errno_mod.ENXIO)
                else "check the state directory's permissions, or point --state-dir elsewhere",
            ) from exc
        finally:
            os.close(dir_fd)
        st = os.fstat(fd)
        owner = os.geteuid() if self.uid is None else self.uid
        if not stat.S_ISREG(st.st_mode) or st.st_uid != owner:
            os.close(fd)
            raise UnsafeStateDirError(
                f"{self.path} is not our regular file; refusing to use it",
                path=self.path,
                remedy=f"remove {self.path}; it is recreated",
            )
        return fd

    def _running_error(self) -> DaemonRunningError:
        holder = read_holder(self.path)
        who = holder.describe() if holder is not None else "another process"
        return DaemonRunningError(
            f"another vfio-manager daemon is running on this node: {who}",
            path=self.path,
            remedy="run one daemon per node (a DaemonSet or a systemd unit, not both); "
            "stop the other one, or wait for it to exit",
        )


__all__ = ["PRESENCE_FILE_NAME", "DaemonPresence", "DaemonRunningError", "daemon_running"]

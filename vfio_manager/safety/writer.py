"""Kernel writes under a deadline, made by a child that a stuck write cannot keep alive.

Each write goes to a child (a forked process that inherits the node lock or, under the tests'
fake kernel, a thread); past its deadline the caller abandons the child, which keeps the node
lock until the kernel lets its write return.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno as errno_mod
import os
import queue
import select
import signal
import struct
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Optional, TypeVar, Union

from vfio_manager.errors import SysfsWriteError, VfioManagerError
from vfio_manager.kernel.sysfs import Unwritten, direct_write
from vfio_manager.log import get_logger

log = get_logger("vfio_manager.safety.writer")

T = TypeVar("T")
Write = Callable[[str, bytes, Callable[[], object]], None]  # path, payload, opened
Request = Optional[tuple[str, bytes]]  # None ends the child
_REPLY = struct.Struct("!i")  # _MADE, then 0 or the errno
_MADE = -1  # the file is open: the write syscall follows
_TRANSIENT = frozenset({errno_mod.EBUSY, errno_mod.EAGAIN, errno_mod.ENODEV})
_FIRST_WAIT, _LONGEST_WAIT = 0.05, 1.0  # between retries of a transient errno


class DeadlineExceededError(VfioManagerError):
    """A write did not return in time; it is still pending in the kernel."""


@dataclass(frozen=True)
class Deadline:
    """When the writes about one function must be done (a ``clock()`` value), and what for."""

    at: float
    what: str
    bdf: Optional[str] = None
    step: Optional[str] = None
    clock: Callable[[], float] = time.monotonic

    def left(self) -> float:
        return max(0.0, self.at - self.clock())

    def exceeded(self, waited: float) -> DeadlineExceededError:
        log.error("deadline exceeded", what=self.what, bdf=self.bdf, step=self.step, timeout=waited)
        return DeadlineExceededError(
            f"{self.what} did not return within {waited:.2g}s; the write is still pending "
            "in the kernel",
            bdf=self.bdf,
            step=self.step,
            remedy="something still holds the device (a VM, or a process with its /dev node "
            "open): stop it and the write completes; raise --timeout if the driver is only "
            "slow. Do not retry before it completes: a second write queues behind the first",
        )


_deadline: contextvars.ContextVar[Optional[Deadline]] = contextvars.ContextVar(
    "vfio_manager_write_deadline", default=None
)


def bounded(
    fn: Callable[[], T],
    deadline: Deadline,
    *,
    retry: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` (writes through a :class:`ChildWriter`) under ``deadline``."""
    token = _deadline.set(deadline)
    try:
        if not retry:
            return fn()
        return retry_transient(fn, deadline_at=deadline.at, clock=deadline.clock, sleep=sleep)
    finally:
        _deadline.reset(token)


def is_transient(exc: object) -> bool:
    """A kernel answer that may change on its own shortly: EBUSY, EAGAIN, ENODEV."""
    return isinstance(exc, SysfsWriteError) and exc.errno in _TRANSIENT


def retry_transient(
    fn: Callable[[], T],
    *,
    deadline_at: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``, retrying transient errnos (waits doubling up to a second, none past
    ``deadline_at``). tenacity, a tenth of a run's start-up, is imported at the first retry."""

    def wait(attempt: int) -> float:
        return float(min(_LONGEST_WAIT, _FIRST_WAIT * (2 ** min(attempt - 1, 32))))

    def again(attempt: int, exc: object) -> bool:
        """Whether to retry after attempt ``attempt`` failed with ``exc`` (and say so)."""
        if not is_transient(exc) or clock() + wait(attempt) >= deadline_at:
            return False
        code = errno_mod.errorcode.get(getattr(exc, "errno", 0) or 0)
        log.info("transient error, retrying", attempt=attempt, errno=code, wait=wait(attempt))
        return True

    try:
        return fn()
    except Exception as exc:
        if not again(1, exc):
            raise
    sleep(wait(1))

    import tenacity  # attempts 2, 3, ...: tenacity counts them from 1

    return tenacity.Retrying(
        retry=lambda state: again(
            state.attempt_number + 1, state.outcome and state.outcome.exception()
        ),
        wait=lambda state: wait(state.attempt_number + 1),
        sleep=sleep,
    )(fn)


def _serve(
    receive: Callable[[], Request], answer: Callable[[int], Optional[bool]], write: Write
) -> None:
    """A child's life: write each request, answer :data:`_MADE` once its file is open, then 0
    or the errno; ``None`` ends it, and so does an answer nobody takes (``False``)."""
    while (request := receive()) is not None:
        try:
            write(*request, lambda: answer(_MADE))
            code = 0
        except OSError as exc:
            code = exc.errno or errno_mod.EIO
        if answer(code) is False:
            return


class _Process:
    """A forked child that keeps only ``keep_fds`` (the node lock) and its two pipes."""

    def __init__(self, keep_fds: Sequence[int], write: Write) -> None:
        req_r, self._requests = os.pipe()
        self._replies, rep_w = os.pipe()
        with warnings.catch_warnings():  # the child runs only os-level code: no lock to inherit
            warnings.simplefilter("ignore", DeprecationWarning)
            self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child; exercised by the process tests
            try:
                for sig in (signal.SIGINT, signal.SIGTERM):  # the run decides when to stop
                    signal.signal(sig, signal.SIG_IGN)
                signal.signal(signal.SIGPIPE, signal.SIG_IGN)
                null = os.open(os.devnull, os.O_RDWR)
                for std in (0, 1, 2):
                    os.dup2(null, std)
                keep = sorted({req_r, rep_w, *keep_fds})  # close everything else
                for low, high in zip([3, *(fd + 1 for fd in keep)], [*keep, 65536]):
                    os.closerange(low, high)
                _serve(lambda: _receive(req_r), lambda code: _reply(rep_w, code), write)
            finally:
                os._exit(0)
        os.close(req_r)  # our ends are not inheritable (os.pipe): no other child gets them
        os.close(rep_w)

    def send(self, path: str, payload: bytes) -> None:
        request = path.encode() + b"\0" + payload  # one write: the child reads it whole
        if len(request) > select.PIPE_BUF:
            raise OSError(errno_mod.E2BIG, f"a write of {len(request)} bytes to sysfs")
        os.write(self._requests, request)

    def answer(self, timeout: Optional[float]) -> Optional[int]:
        """The errno (0: done); ``None`` when ``timeout`` passed first."""
        poller = select.poll()  # not select(): a daemon's descriptors may pass FD_SETSIZE
        poller.register(self._replies, select.POLLIN)
        if not poller.poll(None if timeout is None else timeout * 1000):
            return None
        reply = os.read(self._replies, _REPLY.size)
        if len(reply) < _REPLY.size:
            raise OSError(errno_mod.EIO, "the writer process died")
        return int(_REPLY.unpack(reply)[0])

    def abandon(self) -> None:
        """Close our ends: the child exits once its write returns (EOF, its answer refused)."""
        for fd in (self._requests, self._replies):
            with contextlib.suppress(OSError):
                os.close(fd)

    def end(self) -> None:
        self.abandon()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)

    def returned(self) -> bool:
        try:
            return os.waitpid(self.pid, os.WNOHANG)[0] != 0
        except ChildProcessError:
            return True


def _receive(fd: int) -> Request:  # pragma: no cover - in the child
    path, nul, payload = os.read(fd, select.PIPE_BUF).partition(b"\0")
    return (path.decode(), payload) if nul else None


def _reply(fd: int, code: int) -> bool:  # pragma: no cover - in the child
    try:
        os.write(fd, _REPLY.pack(code))
    except OSError:  # the parent gave up on this write: we are done
        return False
    return True


class _Thread:
    """A thread serving the same loop over queues (pyfakefs fakes pipes)."""

    def __init__(self, write: Write, on_exit: Callable[[_Thread], None]) -> None:
        self.pid = os.getpid()
        self._requests: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._replies: queue.SimpleQueue[int] = queue.SimpleQueue()

        def run() -> None:
            try:
                _serve(self._requests.get, self._replies.put, write)
            finally:
                on_exit(self)

        self._thread = threading.Thread(target=run, name="vfio-manager: writer", daemon=True)
        self._thread.start()

    def send(self, path: str, payload: bytes) -> None:
        self._requests.put((path, payload))

    def answer(self, timeout: Optional[float]) -> Optional[int]:
        try:
            return self._replies.get(timeout=timeout)
        except queue.Empty:
            return None

    def abandon(self) -> None:
        self._requests.put(None)

    end = abandon

    def returned(self) -> bool:
        return not self._thread.is_alive()


class StuckWriter(NamedTuple):
    """A child still in the kernel with a write the run gave up on."""

    pid: int
    what: str


class ChildWriter:
    """Sends each write to an idle child (or a new one) and waits under the deadline."""

    def __init__(
        self, keep_fds: Sequence[int] = (), *, threads: bool = False, write: Write = direct_write
    ) -> None:
        self.keep_fds = tuple(keep_fds)
        self.threads, self._write = threads, write
        self._children: dict[Union[_Process, _Thread], Optional[str]] = {}  # its write, or idle
        self._on_returned: Optional[Callable[[], None]] = None
        self._mutex = threading.Lock()

    def __call__(self, path: str, payload: bytes) -> None:
        what = f"write {payload.decode(errors='replace').strip()!r} to {path}"
        deadline = _deadline.get()
        timeout = None if deadline is None else deadline.left()
        with self._mutex:
            child = next((c for c, busy in self._children.items() if busy is None), None)
            if child is None and self.threads:
                child = _Thread(self._write, self._ended)
            elif child is None:
                child = _Process(self.keep_fds, self._write)
            self._children[child] = what
        made = False
        code: Optional[int] = _MADE
        try:
            child.send(path, payload)
            while code == _MADE:
                code = child.answer(None if deadline is None else deadline.left())
                made = made or code == _MADE
        except OSError as exc:  # a write cut short has an unknown outcome: counted as made
            with self._mutex:
                self._children.pop(child, None)
            child.end()
            when = "during" if made else "before"
            raise (OSError if made else Unwritten)(
                errno_mod.EIO, f"the writer process died {when} its write ({exc.strerror})"
            ) from exc
        if code is None and deadline is not None:  # it keeps `what` until its write returns
            child.abandon()
            raise deadline.exceeded(timeout or 0.0)
        with self._mutex:
            self._children[child] = None
        if code:
            raise (OSError if made else Unwritten)(code, os.strerror(code))

    def stuck(self) -> list[StuckWriter]:
        """Children whose write has not returned (a process child keeps the lock held)."""
        with self._mutex:
            for child in [c for c, busy in self._children.items() if busy and c.returned()]:
                del self._children[child]
            return [StuckWriter(c.pid, busy) for c, busy in self._children.items() if busy]

    def close(self) -> list[StuckWriter]:
        """End the idle children; return the stuck ones (they end when their write returns)."""
        with self._mutex:
            idle = [c for c, busy in self._children.items() if busy is None]
            for child in idle:
                del self._children[child]
        for child in idle:
            child.end()
        return self.stuck()

    def when_returned(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once no thread child is stuck."""
        with self._mutex:
            if any(self._children.values()):
                self._on_returned = callback
                return
        callback()

    def _ended(self, child: _Thread) -> None:
        with self._mutex:
            self._children.pop(child, None)
            if any(self._children.values()):
                return
            callback, self._on_returned = self._on_returned, None
        if callback is not None:
            callback()

"""Kernel writes under a deadline, made by a child that a stuck write cannot keep alive.

Every write of a run goes to one child (a process forked at the first write, which inherits
the node lock, or, under the tests' fake kernel, a thread), and the child makes each from a
thread of its own, so writes from many lanes proceed side by side and one stuck in the kernel
holds up no other. Past its deadline the caller gives up on its write; the child keeps the
node lock until the kernel lets that write return.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno as errno_mod
import itertools
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
Request = Optional[tuple[int, str, bytes]]  # ticket, path, payload; None ends the child
Answer = Callable[[int, int], object]  # ticket, then _MADE, 0 or the errno
_HEAD = struct.Struct("!IH")  # a request's ticket and length
_REPLY = struct.Struct("!Ii")  # ticket; _MADE, then 0 or the errno
_MADE = -1  # the file is open: the write syscall follows
_DIED = -2  # (the caller's side) the child died with the write in it
WRITE_THREAD = "vfio-manager: write"  # the child's thread for one write
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


def _serve(receive: Callable[[], Request], answer: Answer, write: Write) -> None:
    """A child's life: each request is written by a thread of its own, which answers
    :data:`_MADE` once its file is open, then 0 or the errno; ``None`` ends the child once
    every write has returned (a write stuck in the kernel keeps it, and the lock, alive)."""
    threads: list[threading.Thread] = []
    while (request := receive()) is not None:
        thread = threading.Thread(
            target=_write_one, args=(request, answer, write), name=WRITE_THREAD, daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # no thread left (a pids limit): not written, and transient
            answer(request[0], errno_mod.EAGAIN)
            continue
        threads = [t for t in threads if t.is_alive()] + [thread]
    for thread in threads:
        thread.join()


def _write_one(request: tuple[int, str, bytes], answer: Answer, write: Write) -> None:
    ticket, path, payload = request
    code = errno_mod.EIO  # what the caller hears if ``write`` raises anything but OSError
    try:
        write(path, payload, lambda: answer(ticket, _MADE))
        code = 0
    except OSError as exc:
        code = exc.errno or errno_mod.EIO
    finally:
        answer(ticket, code)


def _read_exact(fd: int, size: int) -> Optional[bytes]:
    """``size`` bytes from a pipe, or ``None`` at its end (a message is written whole)."""
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class _Process:
    """A forked child that keeps only ``keep_fds`` (the node lock) and its two pipes; a
    thread of ours reads its answers, and reaps it when it ends (``ended`` is called)."""

    def __init__(
        self,
        keep_fds: Sequence[int],
        write: Write,
        answered: Answer,
        ended: Callable[[_Process], None],
    ) -> None:
        req_r, self._requests = os.pipe()
        replies, rep_w = os.pipe()
        try:
            with warnings.catch_warnings():  # the child runs only os-level code
                warnings.simplefilter("ignore", DeprecationWarning)
                self.pid = os.fork()
        except OSError:
            for fd in (req_r, self._requests, replies, rep_w):
                os.close(fd)
            raise
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
                _serve(lambda: _receive(req_r), lambda *reply: _reply(rep_w, *reply), write)
            finally:
                os._exit(0)
        os.close(req_r)  # our ends are not inheritable (os.pipe): no other child gets them
        os.close(rep_w)

        def read() -> None:
            try:
                while (reply := _read_exact(replies, _REPLY.size)) is not None:
                    answered(*_REPLY.unpack(reply))
            finally:
                os.close(replies)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, 0)
                ended(self)

        self._reader = threading.Thread(target=read, name="vfio-manager: writer", daemon=True)
        self._reader.start()

    def send(self, ticket: int, path: str, payload: bytes) -> None:
        body = path.encode() + b"\0" + payload
        request = _HEAD.pack(ticket, len(body)) + body  # one write: the child reads it whole
        if len(request) > select.PIPE_BUF:
            raise OSError(errno_mod.E2BIG, f"a write of {len(payload)} bytes to sysfs")
        os.write(self._requests, request)

    def finish(self) -> None:
        """No more writes: the child exits once every write it has returned."""
        fd, self._requests = self._requests, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def join(self) -> None:
        self._reader.join()


def _receive(fd: int) -> Request:  # pragma: no cover - in the child
    head = _read_exact(fd, _HEAD.size)
    if head is None:
        return None
    ticket, size = _HEAD.unpack(head)
    body = _read_exact(fd, size)
    if body is None:
        return None
    path, _nul, payload = body.partition(b"\0")
    return ticket, path.decode(), payload


def _reply(fd: int, ticket: int, code: int) -> None:  # pragma: no cover - in the child
    with contextlib.suppress(OSError):  # the caller is gone: nobody wants the answer
        os.write(fd, _REPLY.pack(ticket, code))


class _Thread:
    """A thread serving the same requests over a queue (pyfakefs fakes pipes)."""

    def __init__(self, write: Write, answered: Answer) -> None:
        self.pid = os.getpid()
        self._requests: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=_serve,
            args=(self._requests.get, answered, write),
            name="vfio-manager: writer",
            daemon=True,
        )
        self._thread.start()

    def send(self, ticket: int, path: str, payload: bytes) -> None:
        self._requests.put((ticket, path, payload))

    def finish(self) -> None:
        self._requests.put(None)

    def join(self) -> None:
        self._thread.join()


class StuckWriter(NamedTuple):
    """A write of a child that has not returned (past its deadline, the child keeps it)."""

    pid: int
    what: str


@dataclass
class _Pending:
    """A write sent to ``child``; ``abandoned`` once its caller stopped waiting."""

    child: Union[_Process, _Thread]
    what: str
    replies: queue.SimpleQueue[int]
    abandoned: bool = False


class ChildWriter:
    """Sends each write to the child (started at the first) and waits under the deadline."""

    def __init__(
        self, keep_fds: Sequence[int] = (), *, threads: bool = False, write: Write = direct_write
    ) -> None:
        self.keep_fds = tuple(keep_fds)
        self.threads, self._write = threads, write
        self._child: Union[_Process, _Thread, None] = None
        self._pending: dict[int, _Pending] = {}  # by ticket
        self._tickets = itertools.count(1)
        self._on_returned: Optional[Callable[[], None]] = None
        self._mutex = threading.Lock()

    def __call__(self, path: str, payload: bytes) -> None:
        what = f"write {payload.decode(errors='replace').strip()!r} to {path}"
        deadline = _deadline.get()
        timeout = None if deadline is None else deadline.left()
        replies: queue.SimpleQueue[int] = queue.SimpleQueue()
        with self._mutex:
            try:
                child = self._child = self._child or self._start_child()
            except OSError as exc:  # no pipe or no fork (EMFILE, EAGAIN): nothing written
                raise Unwritten(
                    exc.errno, f"cannot start the writer process ({exc.strerror})"
                ) from exc
            ticket = next(self._tickets)
            self._pending[ticket] = _Pending(child, what, replies)
        try:
            child.send(ticket, path, payload)
        except OSError as exc:  # its pipe is closed: the child is gone, nothing was sent
            with self._mutex:
                self._pending.pop(ticket, None)
            raise Unwritten(
                errno_mod.EIO, f"the writer process died before its write ({exc.strerror})"
            ) from exc
        made, code = False, _MADE
        while code == _MADE:
            code = replies.get() if deadline is None else self._wait(ticket, deadline, timeout)
            made = made or code == _MADE
        with self._mutex:
            self._pending.pop(ticket, None)
        if code == _DIED:
            when = "during" if made else "before"
            raise (OSError if made else Unwritten)(
                errno_mod.EIO, f"the writer process died {when} its write"
            )
        if code:
            raise (OSError if made else Unwritten)(code, os.strerror(code))

    def _wait(self, ticket: int, deadline: Deadline, waited: Optional[float]) -> int:
        """The next answer to ``ticket``; past ``deadline`` (``waited`` from the start), the
        write is given up on."""
        replies = self._pending[ticket].replies  # only its caller removes it
        try:
            return replies.get(timeout=deadline.left())
        except queue.Empty:
            with self._mutex:  # an answer that came just now still counts
                if replies.empty():
                    self._pending[ticket].abandoned = True
                    raise deadline.exceeded(waited or 0.0) from None
            return replies.get()

    def _start_child(self) -> Union[_Process, _Thread]:
        if self.threads:
            return _Thread(self._write, self._answered)
        return _Process(self.keep_fds, self._write, self._answered, self._ended)

    def _answered(self, ticket: int, code: int) -> None:
        """An answer from a child: to its caller, or (given up on) the write has returned."""
        with self._mutex:
            pending = self._pending.get(ticket)
            if pending is None or not pending.abandoned:
                if pending is not None:
                    pending.replies.put(code)
                return
            if code == _MADE:
                return
            del self._pending[ticket]
            callback = self._take_callback()
        if callback is not None:
            callback()

    def _ended(self, child: _Process) -> None:
        """The child is gone: its writes' callers hear so; those given up on have returned."""
        with self._mutex:
            if self._child is child:
                self._child = None
            for ticket, pending in list(self._pending.items()):
                if pending.child is not child:
                    continue
                if pending.abandoned:
                    del self._pending[ticket]
                else:
                    pending.replies.put(_DIED)
            callback = self._take_callback()
        if callback is not None:
            callback()

    def _take_callback(self) -> Optional[Callable[[], None]]:
        """The :meth:`when_returned` callback, once no write is pending (under the mutex)."""
        if self._pending:
            return None
        callback, self._on_returned = self._on_returned, None
        return callback

    def stuck(self) -> list[StuckWriter]:
        """Writes that have not returned (a process child keeps the lock held meanwhile)."""
        with self._mutex:
            return [StuckWriter(p.child.pid, p.what) for p in self._pending.values()]

    def close(self) -> list[StuckWriter]:
        """End the child; return the writes still stuck (it ends when they have returned)."""
        with self._mutex:
            child, self._child = self._child, None
        if child is not None:
            child.finish()
        stuck = self.stuck()
        if child is not None and not any(s.pid == child.pid for s in stuck):
            child.join()
        return stuck

    def when_returned(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once no write is stuck."""
        with self._mutex:
            if self._pending:
                self._on_returned = callback
                return
        callback()

"""Sysfs writes from a child process, so a write stuck in the kernel cannot keep us alive.

A write to ``unbind`` can block in the kernel for as long as a VM holds the device, and the
writes queued behind it (``drivers_probe``, ``bind``, even ``driver_override``, which take
the same device lock) block with it. A thread stuck there keeps its whole process from
exiting: the init container, the systemd unit or the admin's shell would wait with it, far
past ``--timeout``. So the writes are made by a small forked child instead:

* the parent sends ``(path, bytes)`` over a pipe and waits for the errno, under the
  engine's deadline (:mod:`vfio_manager.safety.deadline`); the wait is interruptible, so
  the parent can give up, report and exit;
* the child inherits the node lock's open file description (and nothing else: its stdio
  is /dev/null, so nobody reading our stdout waits for it), so the lock stays held exactly
  as long as a stuck write is in the kernel, and is released by the kernel when the child
  exits after the write returns;
* a child that missed a deadline is left alone (:meth:`ChildWriter.stuck` names it, for
  the lock's holder record) and the next write gets another child; functions that move
  side by side each write through a child of their own.

The child is forked on the first write only, so a converged run forks nothing. Under the
fake kernel of the tests (pyfakefs, in memory) a child would write to its own copy of the
memory: those runs use :func:`direct_write` in-process instead.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
import signal
import struct
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from vfio_manager.kernel.sysfs import direct_write

_HEADER = struct.Struct("!II")  # path length, payload length
_REPLY = struct.Struct("!i")  # 0 or the errno
_MAX_PATH = 4096
_MAX_PAYLOAD = 65536


def _read_exactly(fd: int, size: int) -> Optional[bytes]:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _child_loop(requests: int, replies: int) -> None:
    """The child's whole life: read a request, write it, answer the errno; EOF ends it."""
    while True:
        header = _read_exactly(requests, _HEADER.size)
        if header is None:
            return
        path_len, payload_len = _HEADER.unpack(header)
        if path_len > _MAX_PATH or payload_len > _MAX_PAYLOAD:
            return
        body = _read_exactly(requests, path_len + payload_len)
        if body is None:
            return
        path, payload = body[:path_len].decode(), body[path_len:]
        try:
            direct_write(path, payload)
            code = 0
        except OSError as exc:
            code = exc.errno or errno_mod.EIO
        try:
            os.write(replies, _REPLY.pack(code))
        except OSError:  # the parent is gone (it gave up on this write): we are done
            return


@dataclass
class _Child:
    pid: int
    requests: int  # our write end
    replies: int  # our read end
    busy: Optional[str] = None  # what it is writing, while a request is outstanding


@dataclass(frozen=True)
class StuckWriter:
    """A child still in the kernel with a write the run gave up on."""

    pid: int
    what: str


class ChildWriter:
    """Sends each sysfs write to a forked child; see the module docstring for why.

    ``keep_fds`` are inherited by the children (the node lock's descriptor); every other
    descriptor is closed in them. Thread-safe: a child makes one write at a time, so writes
    made side by side (functions moving in parallel) each get an idle child or a new one;
    a child whose write missed its deadline stays busy and is never handed another.
    """

    def __init__(self, keep_fds: Sequence[int] = ()) -> None:
        self.keep_fds = tuple(keep_fds)
        self._idle: list[_Child] = []
        self._busy: list[_Child] = []  # a write outstanding
        self._stuck: list[_Child] = []  # busy when the run ended (see stuck())
        self._guard = threading.Lock()

    def __call__(self, path: str, payload: bytes) -> None:
        what = f"write {payload.decode(errors='replace').strip()!r} to {path}"
        with self._guard:
            child = self._idle.pop() if self._idle else None
        if child is None:
            child = self._fork()
        with self._guard:
            child.busy = what
            self._busy.append(child)
        try:
            os.write(child.requests, _HEADER.pack(len(path.encode()), len(payload)))
            os.write(child.requests, path.encode() + payload)
            reply = _read_exactly(child.replies, _REPLY.size)
        except OSError as exc:
            self._forget(child)
            raise OSError(errno_mod.EIO, f"the writer process failed: {exc.strerror}") from exc
        if reply is None:
            self._forget(child)
            raise OSError(errno_mod.EIO, "the writer process died")
        with self._guard:
            child.busy = None
            if child in self._stuck:  # a late answer: the run gave up on it meanwhile
                self._stuck.remove(child)
                self._close(child)
            else:
                self._busy.remove(child)
                self._idle.append(child)
        (code,) = _REPLY.unpack(reply)
        if code:
            raise OSError(code, os.strerror(code))

    def in_flight(self) -> list[str]:
        """What the children are writing now, stuck ones included (a snapshot)."""
        with self._guard:
            return [c.busy or "a write" for c in (*self._busy, *self._stuck)]

    def stuck(self) -> list[StuckWriter]:
        """Children whose write has not returned (their descriptors keep the lock held).

        Called when the run is over: a child still busy then holds a write the run gave up
        on."""
        with self._guard:
            self._stuck.extend(self._busy)
            self._busy.clear()
            return [StuckWriter(c.pid, c.busy or "a write") for c in self._stuck]

    def close(self) -> None:
        """End the idle children (EOF on their pipes); stuck ones end when their write
        returns."""
        with self._guard:
            idle, self._idle = self._idle, []
        for child in idle:
            self._close(child)
            _reap(child.pid)

    # -- internals -------------------------------------------------------------------------
    def _forget(self, child: _Child) -> None:
        with self._guard:
            for pool in (self._idle, self._busy, self._stuck):
                if child in pool:
                    pool.remove(child)
        self._close(child)
        _reap(child.pid)

    @staticmethod
    def _close(child: _Child) -> None:
        for fd in (child.requests, child.replies):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _fork(self) -> _Child:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        with warnings.catch_warnings():  # the child runs only os-level code: no lock to inherit
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; exercised by the process tests
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGPIPE, signal.SIG_IGN)
                null = os.open(os.devnull, os.O_RDWR)
                for std in (0, 1, 2):
                    os.dup2(null, std)
                keep = sorted({req_r, rep_w, *self.keep_fds})
                low = 3
                for fd in keep:
                    os.closerange(low, fd)
                    low = fd + 1
                os.closerange(low, 65536)
                _child_loop(req_r, rep_w)
            finally:
                os._exit(0)
        os.close(req_r)
        os.close(rep_w)
        os.set_inheritable(req_w, False)
        os.set_inheritable(rep_r, False)
        return _Child(pid, req_w, rep_r)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


__all__ = ["ChildWriter", "StuckWriter"]

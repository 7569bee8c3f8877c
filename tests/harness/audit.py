"""A safety net: tests must never write to this machine's real /sys, /dev or /proc.

``install()`` adds a ``sys.addaudithook`` hook once per process (hooks cannot be removed, so
it is inert outside :func:`guard`). While a guard is active, a *real* open for writing (audit
event ``open`` with a write mode or write flags) of a path under /sys, /dev or /proc raises
:class:`RealSystemWriteError` before the system call happens, and so does a real mkdir,
remove, rename, symlink or truncate there, and a real ``modprobe``/``rmmod``/``chroot``/...
subprocess. pyfakefs's fake calls raise no audit events, so fake paths never trip it (and
the harness's fake paths live under /node anyway). The violation is also recorded, so a
product ``except`` cannot hide it: the conftest fixture fails the test at teardown.
"""

from __future__ import annotations

import os
import posixpath
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_GUARDED = ("/sys", "/dev", "/proc")
_ALLOWED = (
    "/dev/null",
    "/dev/tty",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/stdin",
    "/dev/stdout",
    "/dev/stderr",
    "/dev/shm",
    "/dev/pts",
    "/dev/fd",
    "/dev/mqueue",
    "/proc/self/fd",
)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_MUTATING_EVENTS = {
    "os.mkdir",
    "os.remove",
    "os.rmdir",
    "os.rename",
    "os.symlink",
    "os.link",
    "os.truncate",
    "os.chmod",
    "os.chown",
    "os.mknod",
}
_DANGEROUS_PROGRAMS = {
    "modprobe",
    "rmmod",
    "insmod",
    "depmod",
    "chroot",
    "driverctl",
    "setpci",
    "udevadm",
    "dpdk-devbind.py",
    "dpdk-devbind",
    "vfio-manage.sh",
}
# keep the real functions out of reach of pyfakefs' module patching: its patched os.path
# walks the stack (to honour skip names), which opens source files, which fires this hook
_REAL: dict[str, Any] = {
    "getcwd": os.getcwd,
    "join": posixpath.join,
    "normpath": posixpath.normpath,
}


class RealSystemWriteError(RuntimeError):
    """A test tried to change the real machine (not an OSError: ``except OSError`` won't eat it)."""


class _State:
    installed = False
    active = 0
    violations: list[str] = []  # noqa: RUF012 - one process-wide list on purpose


def _guarded(path: str) -> bool:
    if not path.startswith("/"):
        try:
            path = _REAL["join"](_REAL["getcwd"](), path)
        except OSError:
            return False
    norm = _REAL["normpath"](path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    for allowed in _ALLOWED:
        if norm == allowed or norm.startswith(allowed + "/"):
            return False
    return any(norm == root or norm.startswith(root + "/") for root in _GUARDED)


def _as_text(path: object) -> str | None:
    if isinstance(path, int):
        return None  # a file descriptor
    if isinstance(path, bytes):
        return path.decode("utf-8", "replace")
    fspath = getattr(path, "__fspath__", None)
    if fspath is not None:
        value = fspath()
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return path if isinstance(path, str) else None


def _violation(message: str) -> None:
    _State.violations.append(message)
    raise RealSystemWriteError(f"test tried to change the real machine: {message}")


def _check_open(args: tuple[Any, ...]) -> None:
    path = _as_text(args[0]) if args else None
    if path is None or not _guarded(path):
        return
    mode = args[1] if len(args) > 1 else None
    flags = args[2] if len(args) > 2 else 0
    writing = isinstance(mode, str) and any(c in mode for c in "wax+")
    writing = writing or (isinstance(flags, int) and bool(flags & _WRITE_FLAGS))
    if writing:
        _violation(f"open({path!r}, mode={mode!r}, flags={flags:#o})")


def _check_subprocess(args: tuple[Any, ...]) -> None:
    argv = args[1] if len(args) > 1 else None
    words: list[str] = []
    if isinstance(argv, (list, tuple)):
        words = [str(_as_text(a) or "") for a in argv]
    elif argv is not None:
        words = str(_as_text(argv) or "").split()
    if args and args[0] is not None:
        words.append(str(_as_text(args[0]) or ""))
    for word in words:
        if posixpath.basename(word) in _DANGEROUS_PROGRAMS:
            _violation(f"subprocess {words!r}")


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _State.active:
        return
    if event == "open":
        _check_open(args)
    elif event in _MUTATING_EVENTS:
        for candidate in args[:2]:
            path = _as_text(candidate)
            if path is not None and _guarded(path):
                _violation(f"{event}({path!r})")
    elif event == "subprocess.Popen":
        _check_subprocess(args)
    elif event == "os.system" and args:
        words = str(args[0]).split()
        if any(posixpath.basename(w) in _DANGEROUS_PROGRAMS for w in words):
            _violation(f"os.system({args[0]!r})")


def install() -> None:
    """Add the audit hook (once per process)."""
    if not _State.installed:
        sys.addaudithook(_hook)
        _State.installed = True


@contextmanager
def guard() -> Iterator[None]:
    """Make the hook active for the duration (nestable)."""
    install()
    _State.active += 1
    try:
        yield
    finally:
        _State.active -= 1


def take_violations() -> list[str]:
    """The violations recorded so far (and forget them)."""
    found = list(_State.violations)
    _State.violations.clear()
    return found

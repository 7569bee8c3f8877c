"""Real-filesystem helpers for tests whose state directory is on the real disk.

pyfakefs patches ``os`` in every module it does not skip; the tests that need real FIFOs,
sockets and device nodes in the state directory list this module in the ``fs`` fixture's
skip names (``REAL_STATE_FILES``), so these helpers create and unblock real special files
while sysfs stays fake.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

import pytest

T = TypeVar("T")

# Patcher(additional_skip_names): the state directory's modules (and this one) use the
# real filesystem; sysfs stays fake.
REAL_STATE_FILES = [
    [
        [
            "vfio_manager.safety.statedir",
            "vfio_manager.safety.lock",
            "vfio_manager.safety.journal",
            "tests.safety.realfs",
        ]
    ]
]


def private_dir(path: str) -> str:
    """A state directory as the tool would create it (0700, ours)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def mkfifo(path: str) -> str:
    os.mkfifo(path, 0o600)
    return path


def mksocket(path: str) -> socket.socket:
    """A listening unix socket at ``path`` (close it at the end of the test)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(1)
    return sock


def mkchardev(path: str) -> str:
    """A character device node (the null device's numbers); skips where mknod is denied."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod is not permitted here")
    return path


def kind(path: str) -> str:
    """``fifo``, ``socket``, ``chardev``, ``file``, ``dir``, ``link`` or ``missing``."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "missing"
    for test, name in (
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "chardev"),
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "link"),
    ):
        if test(mode):
            return name
    return "other"


def names(path: str) -> list[str]:
    return sorted(os.listdir(path))


def _unblock(fifos: Iterable[str]) -> None:
    """Open each FIFO from the other side, so a reader or writer blocked on it returns."""
    for path in fifos:
        for flags in (os.O_WRONLY | os.O_NONBLOCK, os.O_RDONLY | os.O_NONBLOCK):
            with contextlib.suppress(OSError):
                os.close(os.open(path, flags))


def finishes(fn: Callable[[], T], *, within: float, fifos: Iterable[str] = ()) -> T:
    """Run ``fn`` in a thread; fail the test if it has not returned ``within`` seconds.

    A hang is forever, so the bound is generous (the test is only slow when it fails). On a
    hang the FIFOs are opened from the other side so the stuck thread can end, and the test
    fails saying so.
    """
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(within)
    if thread.is_alive():
        fifos = list(fifos)
        for _ in range(50):
            _unblock(fifos)
            thread.join(0.1)
            if not thread.is_alive():
                break
        pytest.fail(f"hung: still running after {within:g}s (blocked on {fifos})")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]

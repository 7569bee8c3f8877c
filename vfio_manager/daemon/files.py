"""Small files the daemon owns (ready file, intents, its presence), written and read safely.

The daemon runs as root and writes where others can look (the state directory is a hostPath
shared with one-shot commands and a preStop hook; the ready file may sit anywhere the
operator's probe reads it). So, as for the journal: names are resolved relative to an open
directory descriptor, every file is opened with ``O_NOFOLLOW`` (a planted symlink cannot aim
a write elsewhere), writes go to a temporary file that is renamed over the target (a reader
never sees half a document), and reads are bounded and refuse anything but a regular file,
opened ``O_NONBLOCK`` so a FIFO planted under the name can never hang the loop.
"""

from __future__ import annotations

import contextlib
import os
import stat
from typing import Optional

_TMP_PREFIX = ".tmp-"
INTENT_DIR = "intent"  # <state-dir>/intent: the admin's intents (daemon/intent.py)
DEFAULT_READ_LIMIT = 4096


def intents_recorded(state_dir: str) -> bool:
    """Whether the intent folder exists: a state directory where no intent was ever
    recorded has none, and ``status`` then need not load the intent store at all."""
    return os.path.isdir(os.path.join(state_dir, INTENT_DIR))


def write_atomic(dir_fd: int, name: str, payload: bytes, *, mode: int = 0o644) -> None:
    """Replace ``name`` in ``dir_fd`` with ``payload`` in one rename; ``OSError`` on failure."""
    tmp = f"{_TMP_PREFIX}{name}.{os.getpid()}.{os.urandom(4).hex()}"
    fd = os.open(
        tmp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        mode,
        dir_fd=dir_fd,
    )
    try:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)  # the umask must not decide who can read it
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def remove(dir_fd: int, name: str) -> bool:
    """Unlink ``name`` (a symlink itself, never its target); False when it was not there."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def read_regular(
    dir_fd: int, name: str, limit: int = DEFAULT_READ_LIMIT
) -> tuple[Optional[bytes], Optional[str]]:
    """``(content, None)``, or ``(None, problem)`` for anything that is not a small regular file.

    ``(None, None)`` when ``name`` does not exist. Never blocks: the type is checked before
    opening (so a device node is never opened) and again on the descriptor.
    """
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        if not stat.S_ISREG(mode):
            raise _NotRegular(mode)
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _NotRegular(st.st_mode)
            if st.st_size > limit:
                return None, f"{st.st_size} bytes, more than the {limit} expected"
            return os.read(fd, limit + 1)[:limit], None
        finally:
            os.close(fd)
    except FileNotFoundError:
        return None, None
    except _NotRegular as exc:
        return None, f"not a regular file ({_kind(exc.mode)})"
    except OSError as exc:
        return None, f"unreadable: {exc.strerror}"


class _NotRegular(Exception):
    def __init__(self, mode: int) -> None:
        super().__init__(mode)
        self.mode = mode


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "unknown type"


def open_directory(path: str) -> int:
    """Open an existing directory (not a symlink to one); ``OSError`` otherwise."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

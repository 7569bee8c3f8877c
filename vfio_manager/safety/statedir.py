"""The state directory's one gateway: every file of the lock, the journal and the intents.

The directory must be ours and writable by nobody else; only regular files of ours are opened
(never through a symlink, never blocking on a FIFO), reads are bounded, replaces atomic.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
import stat
from typing import Optional

from vfio_manager.errors import VfioManagerError
from vfio_manager.log import get_logger

log = get_logger("vfio_manager.safety.statedir")

DEFAULT_STATE_DIR = "/run/vfio-manager"
TMP_PREFIX = ".tmp-"
_OPEN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeStateDirError(VfioManagerError):
    """The state directory (or a file in it) could be controlled by someone else."""


class UnusableFile(Exception):
    """A name in the state directory that is not a regular file of ours (or cannot be read)."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name, self.problem = name, problem


_KINDS = {
    stat.S_IFREG: "a regular file",
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symlink",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a file")


def _open_child(
    fd: int, name: str, child: str, path: str, owner: int, last: bool, create: bool
) -> Optional[int]:
    """``name`` in the directory ``fd`` opened as a directory without following a link (made
    first if missing and ``create``), ``None`` if missing; ``child`` is its path on the way to
    the state directory ``path``, and ``last`` when it is that directory."""
    try:
        return os.open(name, _DIR_OPEN, dir_fd=fd)
    except OSError as exc:
        failed = exc
    try:
        kind = _kind(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        if not create:
            return None
        try:
            os.mkdir(name, 0o700 if last else 0o755, dir_fd=fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise UnsafeStateDirError(
                f"cannot create state directory {path}: {exc.strerror}",
                path=child,
                errno=exc.errno,
                remedy="point --state-dir at a writable location (default /run/vfio-manager; "
                "in a container, mount the host's /run or an emptyDir there)",
            ) from exc
        return _open_child(fd, name, child, path, owner, last, create=False)
    if kind == "a directory" and failed.errno == errno_mod.ENOENT:  # made by another run meanwhile
        return _open_child(fd, name, child, path, owner, last, create=False)
    if kind == "a directory":  # there, but not ours to open
        raise UnsafeStateDirError(
            f"cannot open state directory {path}: {failed.strerror}",
            path=child,
            errno=failed.errno,
            remedy="check its permissions, or point --state-dir elsewhere",
        ) from failed
    if last:
        problem = "is a symlink" if kind == "a symlink" else f"is {kind}, not a directory"
        raise _unsafe(path, problem, uid=owner) from failed
    if kind == "a symlink":
        raise UnsafeStateDirError(
            f"cannot trust state directory {path}: {child} is a symlink",
            path=child,
            remedy=f"give the path it leads to (--state-dir {os.path.realpath(path)}) if "
            "every directory on that path is safe",
        ) from failed
    raise UnsafeStateDirError(
        f"cannot use state directory {path}: {child} is {kind}, not a directory",
        path=child,
        errno=failed.errno,
        remedy=f"point --state-dir at a directory that is not under {child} "
        f"(or move {child} out of the way)",
    ) from failed


def _unsafe(path: str, problem: str, *, uid: int) -> UnsafeStateDirError:
    return UnsafeStateDirError(
        f"state directory {path} {problem}; refusing to use it",
        path=path,
        remedy=f"remove {path} (it is recreated, owned by UID {uid}, mode 0700) or point "
        "--state-dir at a directory owned by this user and writable by nobody else",
    )


def _problem(st: os.stat_result, owners: set[int], *, sticky_ok: bool = False) -> str:
    """Why a directory with ``st`` could be changed by someone else ("" if it cannot)."""
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in owners:
        return f"is owned by UID {st.st_uid}, not {' or '.join(map(str, sorted(owners)))}"
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not (sticky_ok and mode & stat.S_ISVTX):
        return f"is writable by group or others (mode {mode:04o})"
    return ""


class StateDir:
    """An open, checked state directory; ``owner`` is the UID it and its files must have."""

    def __init__(self, path: str, fd: int, owner: int) -> None:
        self.path, self.fd, self.owner = path, fd, owner

    @classmethod
    def open(cls, path: str, *, uid: Optional[int] = None) -> StateDir:
        """Create ``path`` (mode 0700, missing parents 0755) if missing, check it, return it."""
        found = cls._open_dir(path, os.geteuid() if uid is None else uid, create=True)
        if found is None:  # removed between mkdir and open
            raise UnsafeStateDirError(
                f"state directory {path} disappeared while it was opened",
                path=path,
                remedy="retry; if it recurs, something else removes the directory",
            )
        return found

    @classmethod
    def open_existing(cls, path: str, *, uid: Optional[int] = None) -> Optional[StateDir]:
        """The directory, checked, or ``None`` when it does not exist (nothing is created)."""
        return cls._open_dir(path, os.geteuid() if uid is None else uid)

    def subdir(self, name: str, *, create: bool = False) -> Optional[StateDir]:
        """The directory ``name`` in this one (or ``None``), checked like it; ``create``
        makes it (0700) if missing."""
        return self._open_dir(self.path_of(name), self.owner, create=create, at=self.fd)

    @classmethod
    def _open_dir(
        cls, path: str, owner: int, *, create: bool = False, at: Optional[int] = None
    ) -> Optional[StateDir]:
        """Open ``path`` one component at a time from / (or its last one from ``at``, a
        checked directory), following no link. Every directory above it is owned by root or
        ``owner`` and writable by nobody else, or sticky (/tmp: nobody else can rename what is
        ours in it), so nobody else can swap what is below. ``create`` makes what is missing."""
        parts = [p for p in os.path.abspath(path).split(os.sep) if p]
        if at is not None:
            parts, here, fd = parts[-1:], os.path.dirname(path), at
        else:
            here, fd = os.sep, os.open(os.sep, _DIR_OPEN)
        try:
            for index, part in enumerate(parts):
                last = index == len(parts) - 1
                if at is None and (problem := _problem(os.fstat(fd), {0, owner}, sticky_ok=True)):
                    raise UnsafeStateDirError(
                        f"cannot trust state directory {path}: {here} {problem}",
                        path=here,
                        remedy="point --state-dir at a directory whose parents are all owned "
                        f"by root (or UID {owner}) and writable by nobody else but sticky ones "
                        "like /tmp (the default /run/vfio-manager is one)",
                    )
                child = os.path.join(here, part)
                opened = _open_child(fd, part, child, path, owner, last, create)
                if fd != at:
                    os.close(fd)
                if opened is None:
                    return None
                here, fd = child, opened
        except BaseException:
            if fd != at:
                os.close(fd)
            raise
        problem = _problem(os.fstat(fd), {owner})
        if problem:
            os.close(fd)
            raise _unsafe(path, problem, uid=owner)
        return cls(path, fd, owner)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> StateDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def path_of(self, name: str) -> str:
        return os.path.join(self.path, name)

    def names(self) -> list[str]:
        return sorted(os.listdir(self.fd))

    def _usable(self, name: str, st: os.stat_result, limit: Optional[int]) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise UnusableFile(name, f"not a regular file ({_kind(st.st_mode)})")
        if st.st_uid != self.owner:
            raise UnusableFile(name, f"owned by UID {st.st_uid}, not {self.owner}")
        if limit is not None and st.st_size > limit:
            raise UnusableFile(name, f"{st.st_size} bytes, more than the {limit} expected")

    def open_file(self, name: str, flags: int, limit: Optional[int] = None) -> Optional[int]:
        """Look, open (never following, never blocking), check again; ``None`` if absent.
        :class:`UnusableFile` unless a regular file of ours, of at most ``limit`` bytes."""
        try:
            self._usable(name, os.stat(name, dir_fd=self.fd, follow_symlinks=False), limit)
        except FileNotFoundError:
            if not flags & os.O_CREAT:
                return None
        except OSError as exc:
            raise UnusableFile(name, f"unreadable: {exc.strerror}") from exc
        try:
            fd = os.open(name, flags | _OPEN, 0o600, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            kinds = {errno_mod.ELOOP: "a symlink", errno_mod.ENXIO: "a socket"}
            problem = f"not a regular file ({kinds[exc.errno]})" if exc.errno in kinds else None
            raise UnusableFile(name, problem or f"unreadable: {exc.strerror}") from exc
        try:
            self._usable(name, os.fstat(fd), limit)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read(self, name: str, *, limit: int, whole: bool = True) -> Optional[bytes]:
        """The content of ``name`` (``None`` if absent), refused larger than ``limit`` if
        ``whole``, else cut there."""
        fd = self.open_file(name, os.O_RDONLY, limit if whole else None)
        if fd is None:
            return None
        data = b""
        try:
            while len(data) <= limit and (chunk := os.read(fd, limit + 1 - len(data))):
                data += chunk
        except OSError as exc:
            raise UnusableFile(name, f"unreadable: {exc.strerror}") from exc
        finally:
            os.close(fd)
        if len(data) > limit and whole:
            raise UnusableFile(name, f"more than the {limit} bytes expected")
        return data[:limit]

    def open_lock_file(self, name: str) -> int:
        """Open (creating it if missing) a lock file, refused unless a regular file of ours."""
        path = self.path_of(name)
        try:
            fd = self.open_file(name, os.O_RDWR | os.O_CREAT, None)
        except UnusableFile as bad:
            raise UnsafeStateDirError(
                f"state directory {self.path} holds a {name} that is not the lock file this "
                f"tool creates: {bad.problem}; refusing to use it",
                path=path,
                remedy=f"remove {path} (it is recreated as a regular file owned by UID "
                f"{self.owner}), or point --state-dir elsewhere",
            ) from bad
        if fd is None:  # removed between the look and the open
            raise UnsafeStateDirError(
                f"the lock file {path} disappeared while it was opened",
                path=path,
                remedy="retry; something else removes files in the state directory",
            )
        return fd

    def replace(self, name: str, data: bytes) -> None:
        """Atomically and durably make ``data`` the content of ``name`` (never written through)."""
        _replace_at(self.fd, name, data, 0o600)

    def remove(self, name: str) -> bool:
        """Remove ``name`` durably; ``False`` if it was not there."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        os.fsync(self.fd)
        return True

    def set_aside(self, name: str, suffix: str) -> str:
        """Rename whatever ``name`` is to ``NAME<suffix>`` or ``NAME.N<suffix>`` (returned)."""
        for attempt in range(100):
            target = f"{name}{suffix}" if attempt == 0 else f"{name}.{attempt}{suffix}"
            try:
                os.stat(target, dir_fd=self.fd, follow_symlinks=False)
            except FileNotFoundError:  # free (a dangling symlink is not)
                os.rename(name, target, src_dir_fd=self.fd, dst_dir_fd=self.fd)
                os.fsync(self.fd)
                return target
        raise OSError(errno_mod.EEXIST, f"no free name to set {name} aside")

    def sweep_temporaries(self) -> list[str]:
        removed = []
        for name in self.names():
            if name.startswith(TMP_PREFIX):
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=self.fd)
                    removed.append(name)
        return removed


def _replace_at(dir_fd: int, name: str, data: bytes, mode: int) -> None:
    tmp = f"{TMP_PREFIX}{name}.{os.getpid()}.{os.urandom(4).hex()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN, mode, dir_fd=dir_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)  # the umask must not decide who can read it
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def replace_file(path: str, data: bytes, *, mode: int = 0o644) -> None:
    """``StateDir.replace`` for a file anywhere (the daemon's ready file)."""
    fd = os.open(os.path.dirname(path) or ".", _DIR_OPEN)
    try:
        _replace_at(fd, os.path.basename(path), data, mode)
    finally:
        os.close(fd)


def remove_file(path: str) -> bool:
    """Remove a file anywhere (a symlink itself, never its target); ``False`` if not there."""
    fd = os.open(os.path.dirname(path) or ".", _DIR_OPEN)
    try:
        os.unlink(os.path.basename(path), dir_fd=fd)
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)
    return True

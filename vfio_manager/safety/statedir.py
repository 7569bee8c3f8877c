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


def _not_a_directory_above(path: str) -> Optional[str]:
    """The first existing component of ``path`` (itself included) that is not a directory."""
    current = os.sep
    for part in filter(None, os.path.abspath(path).split(os.sep)):
        current = os.path.join(current, part)
        try:
            if not stat.S_ISDIR(os.stat(current).st_mode):  # a symlink to a directory is one
                return current
        except FileNotFoundError:
            return None
        except OSError:
            return current
    return None


def _unsafe(path: str, problem: str, *, uid: int) -> UnsafeStateDirError:
    return UnsafeStateDirError(
        f"state directory {path} {problem}; refusing to use it",
        path=path,
        remedy=f"remove {path} (it is recreated, owned by UID {uid}, mode 0700) or point "
        "--state-dir at a directory owned by this user and writable by nobody else",
    )


def _kind_at(path: str) -> str:
    try:
        return _kind(os.lstat(path).st_mode)
    except OSError:
        return "not a directory"


class StateDir:
    """An open, checked state directory; ``owner`` is the UID it and its files must have."""

    def __init__(self, path: str, fd: int, owner: int) -> None:
        self.path, self.fd, self.owner = path, fd, owner

    @classmethod
    def open(cls, path: str, *, uid: Optional[int] = None) -> StateDir:
        """Create ``path`` (mode 0700) if missing, check it, and return it open."""
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o755, exist_ok=True)
            os.mkdir(path, 0o700)
            log.debug("state dir created", path=path)
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno != errno_mod.ENOTDIR:  # a file in the way: opening names it
                raise UnsafeStateDirError(
                    f"cannot create state directory {path}: {exc.strerror}",
                    path=path,
                    errno=exc.errno,
                    remedy="point --state-dir at a writable location (default "
                    "/run/vfio-manager; in a container, mount the host's /run or an emptyDir "
                    "there)",
                ) from exc
        found = cls.open_existing(path, uid=uid)
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
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=self.fd)
        return self._open_dir(self.path_of(name), self.owner, at=(self.fd, name))

    @classmethod
    def _open_dir(
        cls, path: str, owner: int, *, at: Optional[tuple[int, str]] = None
    ) -> Optional[StateDir]:
        try:
            fd = os.open(path, _DIR_OPEN) if at is None else os.open(at[1], _DIR_OPEN, dir_fd=at[0])
        except OSError as exc:
            not_dir = exc.errno in (errno_mod.ELOOP, errno_mod.ENOTDIR)
            if not_dir and os.path.islink(path):
                raise _unsafe(path, "is a symlink", uid=owner) from exc
            # some file systems say ENOENT for ENOTDIR
            blocker = (
                _not_a_directory_above(path) if not_dir or exc.errno == errno_mod.ENOENT else None
            )
            if blocker is not None and (blocker != os.path.abspath(path) or not not_dir):
                raise UnsafeStateDirError(
                    f"cannot use state directory {path}: {blocker} is {_kind_at(blocker)}, "
                    "not a directory",
                    path=blocker,
                    errno=exc.errno,
                    remedy=f"point --state-dir at a directory that is not under {blocker} "
                    f"(or move {blocker} out of the way)",
                ) from exc
            if not_dir:
                raise _unsafe(path, f"is {_kind_at(path)}, not a directory", uid=owner) from exc
            if exc.errno == errno_mod.ENOENT:
                return None
            raise UnsafeStateDirError(
                f"cannot open state directory {path}: {exc.strerror}",
                path=path,
                errno=exc.errno,
                remedy="check its permissions, or point --state-dir elsewhere",
            ) from exc
        st = os.fstat(fd)
        problem: Optional[str] = None
        if st.st_uid != owner:
            problem = f"is owned by UID {st.st_uid}, not {owner}"
        elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            problem = f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
        if problem is not None:
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

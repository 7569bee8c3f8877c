"""The admin's intents: "leave this function on the host", recorded in the state directory.

Why: a daemon that puts every selected function back on vfio-pci would undo, within a
debounce window, an admin's ``vfio-manager unbind 0000:03:00.0`` (to run a diagnostic on the
native driver, to flash firmware). Fighting the admin is worse than useless. So ``unbind``
and ``unbind-all``, run while a daemon is up (:mod:`.presence`), record an intent per
function before they write; the daemon reports those functions as ``intent-host`` and never
moves them; ``bind`` and ``bind-all`` clear the intents of the functions they move.

Layout: ``<state-dir>/intent/<bdf>``, one small JSON file per function
(``{"bdf", "recorded_at", "by", "pid"}``). The file's *name* is the intent; its content is
only for humans. One file per function, like the journal: recording or clearing one never
rewrites another, and a damaged file costs one function. The state directory is on tmpfs by
default, so intents end at reboot, like the bindings they protect.

Robust reads: a name that is not a canonical BDF is ignored (temporary files, debris); a
file that is a symlink, a FIFO, a device, too large or not JSON still counts as an intent
(the conservative reading: the daemon does not write to a function when unsure the admin
wants it), with the problem reported so a human can remove it. Nothing is opened before its
type is known, nothing blocks.

Intents must be read *under the node lock* by whoever writes: an ``unbind`` that records an
intent and unbinds between the daemon's read and its writes would otherwise be undone.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Optional

from vfio_manager.daemon import files
from vfio_manager.errors import VfioManagerError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.log import get_logger
from vfio_manager.safety.statedir import DEFAULT_STATE_DIR, UnsafeStateDirError, open_state_dir

log = get_logger("vfio_manager.daemon.intent")

INTENT_DIR = files.INTENT_DIR


class IntentError(VfioManagerError):
    """An intent could not be recorded or cleared (state directory not writable)."""


@dataclass(frozen=True)
class Intent:
    """One function the admin asked to leave on the host.

    ``problem`` is set when the file is not what we write (a symlink, a FIFO, not JSON); it
    still counts as an intent.
    """

    bdf: str
    recorded_at: Optional[str] = None
    by: Optional[str] = None
    pid: Optional[int] = None
    problem: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return {
            "bdf": self.bdf,
            "recorded_at": self.recorded_at,
            "by": self.by,
            "pid": self.pid,
            "problem": self.problem,
        }

    def describe(self) -> str:
        """The reason shown in ``status`` and ``/readyz``."""
        who = f" by `{self.by}`" if self.by else ""
        when = f" at {self.recorded_at}" if self.recorded_at else ""
        text = f"left on the host by intent{who}{when}"
        if self.problem:
            text += f" (intent file {self.problem})"
        return text


def _canonical(bdf: str) -> str:
    return str(PciAddress.parse(bdf))  # UsageError for anything that is not a BDF


def _command() -> str:
    import shlex

    return shlex.join([os.path.basename(sys.argv[0]) or "python", *sys.argv[1:]])


def _now(clock: Callable[[], float]) -> str:
    import datetime

    moment = datetime.datetime.fromtimestamp(clock(), tz=datetime.timezone.utc)
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


class IntentStore:
    def __init__(
        self,
        state_dir: str = DEFAULT_STATE_DIR,
        *,
        uid: Optional[int] = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_dir = state_dir
        self.uid = uid
        self.wall_clock = wall_clock

    @property
    def path(self) -> str:
        return os.path.join(self.state_dir, INTENT_DIR)

    # -- writers (run under the node lock) ---------------------------------------------------
    def record(self, bdf: str, *, command: Optional[str] = None) -> Intent:
        """Record "leave ``bdf`` on the host"; :class:`IntentError` when it cannot."""
        name = _canonical(bdf)
        intent = Intent(
            bdf=name,
            recorded_at=_now(self.wall_clock),
            by=command if command is not None else _command(),
            pid=os.getpid(),
        )
        import json

        payload = (json.dumps(intent.to_json(), sort_keys=True) + "\n").encode()
        try:
            with self._directory(create=True) as dir_fd:
                if dir_fd is None:  # create=True always opens or raises
                    raise FileNotFoundError(errno_mod.ENOENT, "intent directory missing")
                files.write_atomic(dir_fd, name, payload, mode=0o600)
        except OSError as exc:
            raise self._error(exc, "record", name) from exc
        log.info("intent recorded: the daemon leaves this function on the host", bdf=name)
        return intent

    def clear(self, bdfs: Iterable[str]) -> list[str]:
        """Clear the intents of ``bdfs``; returns the BDFs whose intent existed."""
        names = sorted({_canonical(b) for b in bdfs})
        cleared: list[str] = []
        with self._directory(create=False) as dir_fd:
            if dir_fd is None:
                return cleared
            for name in names:
                try:
                    if files.remove(dir_fd, name):
                        cleared.append(name)
                except OSError as exc:
                    raise self._error(exc, "clear", name) from exc
        if cleared:
            log.info("intent cleared: the daemon manages these functions again", bdfs=cleared)
        return cleared

    # -- readers ---------------------------------------------------------------------------
    def read(self) -> dict[str, Intent]:
        """Every intent, by canonical BDF; ``{}`` when the directory does not exist."""
        found: dict[str, Intent] = {}
        with self._directory(create=False) as dir_fd:
            if dir_fd is None:
                return found
            for name in sorted(os.listdir(dir_fd)):
                address = PciAddress.from_sysfs_name(name)
                if address is None or str(address) != name:
                    continue
                found[name] = self._load(dir_fd, name)
        return found

    def bdfs(self) -> frozenset[str]:
        return frozenset(self.read())

    # -- internals -------------------------------------------------------------------------
    @staticmethod
    def _load(dir_fd: int, name: str) -> Intent:
        data, problem = files.read_regular(dir_fd, name)
        if data is None:
            # problem None: removed between listing and reading; honoured for this round
            return Intent(bdf=name, problem=problem or "vanished while read")
        import json

        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            return Intent(bdf=name, problem=f"not valid JSON ({type(exc).__name__})")
        if not isinstance(doc, dict):
            return Intent(bdf=name, problem="not a JSON object")
        at, by, pid = doc.get("recorded_at"), doc.get("by"), doc.get("pid")
        return Intent(
            bdf=name,
            recorded_at=at if isinstance(at, str) else None,
            by=by if isinstance(by, str) else None,
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        )

    @contextlib.contextmanager
    def _directory(self, *, create: bool) -> Iterator[Optional[int]]:
        """The intent directory's descriptor (``None`` if absent and not ``create``)."""
        fd = self._open_directory(create=create)
        if fd is None:
            yield None
            return
        try:
            self._check_owner(fd)
            yield fd
        finally:
            os.close(fd)

    def _open_directory(self, *, create: bool) -> Optional[int]:
        if not create:
            try:
                return files.open_directory(self.path)
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise self._unsafe_or(exc) from exc
        state_fd = open_state_dir(self.state_dir, uid=self.uid)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(INTENT_DIR, 0o700, dir_fd=state_fd)
            return os.open(
                INTENT_DIR,
                os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                dir_fd=state_fd,
            )
        except OSError as exc:
            raise self._unsafe_or(exc) from exc
        finally:
            os.close(state_fd)

    def _check_owner(self, fd: int) -> None:
        owner = os.geteuid() if self.uid is None else self.uid
        st = os.fstat(fd)
        if st.st_uid != owner or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UnsafeStateDirError(
                f"{self.path} is owned by UID {st.st_uid} with mode "
                f"{stat.S_IMODE(st.st_mode):04o}; refusing to trust its intents",
                path=self.path,
                remedy=f"remove {self.path} (recreated owned by UID {owner}, mode 0700)",
            )

    def _unsafe_or(self, exc: OSError) -> VfioManagerError:
        if exc.errno in (errno_mod.ELOOP, errno_mod.ENOTDIR):
            return UnsafeStateDirError(
                f"{self.path} is not a directory (a symlink or a file); refusing to use it",
                path=self.path,
                remedy=f"remove {self.path}; it is recreated as a directory",
            )
        return self._error(exc, "open", INTENT_DIR)

    def _error(self, exc: OSError, verb: str, name: str) -> IntentError:
        return IntentError(
            f"cannot {verb} the intent {os.path.join(self.path, name)}: {exc.strerror}",
            path=self.path,
            errno=exc.errno,
            remedy="the state directory must be writable and not full (default /run/vfio-manager)",
        )


__all__ = ["INTENT_DIR", "Intent", "IntentError", "IntentStore"]

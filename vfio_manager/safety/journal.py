"""What a function looked like before we touched it, kept where a killed run can find it.

Two kinds of record live in the state directory (see :mod:`vfio_manager.safety.lock`):

``journal-BDF.json`` (a *transition*)
    written by :meth:`Journal.record_start` before the first write to a function, updated
    by :meth:`Journal.mark_step` after each step, removed by :meth:`Journal.complete` or
    :meth:`Journal.abort`. A transition file left behind means a run died half way;
    :meth:`Journal.pending` returns them so the next run can finish or roll back.

``origin-BDF.json`` (an *origin*)
    the driver and override a function had before it was first moved to vfio ("as found").
    It stays while the function is in vfio mode, across any number of runs, so returning to
    the host restores exactly that driver and override; and it stays after the return, while
    the function is in that state, so the next run leaves it so. It is dropped
    (:meth:`Journal.forget_origin`) when a run sees the function on the host in another
    state: someone else changed it, and "as found" is over. A reboot clears it with the rest
    of /run, as it resets the functions to what the kernel and the boot configuration pick.

Why one file per function rather than one file for all: the engine moves functions one at a
time, and each step rewrites only that function's record (a small write, instead of
rewriting every function's state after every step); a corrupt file costs one function's
record, not the whole node's; listing the directory is the whole of crash recovery; and
the file name is the canonical BDF (validated by :class:`~vfio_manager.kernel.address.PciAddress`),
so no record name can climb out of the directory.

Every write is atomic and durable: a temporary file in the same directory, ``fsync``,
``os.replace``, ``fsync`` of the directory. Every file is opened with ``O_NOFOLLOW``. A file
that cannot be parsed is never a traceback: it is renamed ``*.corrupt`` (kept for a human)
and reported as a :class:`JournalEntry` with ``problem`` set. The default state directory is
on tmpfs (/run), which is right: binding state, IOMMU group numbers and BDFs all reset or
may change at reboot, and so should these records.

The journal assumes its caller holds the :class:`~vfio_manager.safety.lock.NodeLock`: any
transition file it finds belongs to a run that is no longer running.
"""

from __future__ import annotations

import contextlib
import datetime
import errno as errno_mod
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from vfio_manager.errors import VfioManagerError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import Direction, is_vfio_driver
from vfio_manager.kernel.model import PciFunction
from vfio_manager.log import get_logger
from vfio_manager.safety.lock import DEFAULT_STATE_DIR, open_state_dir

log = get_logger("vfio_manager.safety.journal")

SCHEMA_VERSION = 1
TRANSITION = "transition"
ORIGIN = "origin"
_PREFIX = {TRANSITION: "journal-", ORIGIN: "origin-"}
_SUFFIX = ".json"
_CORRUPT = ".corrupt"
_TMP_PREFIX = ".tmp-"
_MAX_RECORD = 64 * 1024  # a record is a few hundred bytes; anything bigger is garbage
_NAME = re.compile(r"^(journal|origin)-(?P<bdf>[^/]+)\.json$")


class JournalError(VfioManagerError):
    """The journal could not be written: the engine must not write to the function then."""


@dataclass(frozen=True)
class JournalEntry:
    """One record: a transition in flight, or the origin of a function (how it was found).

    ``original_driver``/``original_override`` are the function's state before the first
    write (``None``: no driver / override unset). ``steps_done`` are the step names the
    engine marked, in order. ``origin_created`` says whether this transition also wrote the
    origin record (informational: a rollback keeps the origin, see :meth:`Journal.abort`).

    A record that could not be read has ``problem`` (why) and ``quarantined_as`` (where the
    bad file went) set, and only ``bdf`` (``None`` if even the name was unusable) besides.
    """

    bdf: Optional[str]
    record: str = TRANSITION
    direction: Optional[Direction] = None
    vendor_device: Optional[str] = None
    original_driver: Optional[str] = None
    original_override: Optional[str] = None
    steps_done: tuple[str, ...] = ()
    started_at: Optional[str] = None
    updated_at: Optional[str] = None
    pid: Optional[int] = None
    origin_created: bool = False
    problem: Optional[str] = None
    quarantined_as: Optional[str] = field(default=None, compare=False)

    @property
    def corrupt(self) -> bool:
        return self.problem is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": SCHEMA_VERSION,
            "record": self.record,
            "bdf": self.bdf,
            "direction": self.direction.value if self.direction is not None else None,
            "vendor_device": self.vendor_device,
            "original_driver": self.original_driver,
            "original_override": self.original_override,
            "steps_done": list(self.steps_done),
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "pid": self.pid,
            "origin_created": self.origin_created,
        }

    @classmethod
    def from_json(cls, data: object, *, record: str, bdf: str) -> JournalEntry:
        """Validate a parsed record strictly; raise ValueError on anything unexpected."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("version") != SCHEMA_VERSION:
            raise ValueError(f"unknown version {data.get('version')!r}")
        if data.get("record") != record:
            raise ValueError(f"record kind {data.get('record')!r}, expected {record!r}")
        if data.get("bdf") != bdf:
            raise ValueError(f"names {data.get('bdf')!r} but is filed as {bdf}")
        direction = Direction(_str(data, "direction", optional=False))
        steps = data.get("steps_done", [])
        if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
            raise ValueError("steps_done is not a list of strings")
        pid = data.get("pid")
        if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)):
            raise ValueError("pid is not an integer")
        created = data.get("origin_created", False)
        if not isinstance(created, bool):
            raise ValueError("origin_created is not a boolean")
        return cls(
            bdf=bdf,
            record=record,
            direction=direction,
            vendor_device=_str(data, "vendor_device"),
            original_driver=_driver(data, "original_driver"),
            original_override=_driver(data, "original_override"),
            steps_done=tuple(steps),
            started_at=_str(data, "started_at"),
            updated_at=_str(data, "updated_at"),
            pid=pid,
            origin_created=created,
        )


def _str(data: dict[str, Any], key: str, *, optional: bool = True) -> Optional[str]:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key} is not a string")
    return value


def _driver(data: dict[str, Any], key: str) -> Optional[str]:
    """A driver name read back must still be a plain name: it will be written to sysfs."""
    value = _str(data, key)
    if value is not None and (value in {"", ".", ".."} or any(c in value for c in "/\n\0")):
        raise ValueError(f"{key} {value!r} is not a driver name")
    return value


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _vendor_device(function: PciFunction) -> str:
    return f"{function.vendor:04x}:{function.device:04x}"


class Journal:
    """Transition and origin records of one node, in ``state_dir``.

    ``now`` (an ISO-8601 timestamp factory) is injectable for tests. Methods open the state
    directory afresh each time (and check it, see :func:`~vfio_manager.safety.lock.open_state_dir`),
    so a ``Journal`` holds no descriptor and needs no closing.
    """

    def __init__(
        self,
        state_dir: str = DEFAULT_STATE_DIR,
        *,
        now: Callable[[], str] = _utc_now,
        uid: Optional[int] = None,
        readonly: bool = False,
    ) -> None:
        self.state_dir = state_dir
        self.now = now
        self.uid = uid
        self.readonly = readonly  # a dry run: read records, never rename, remove or create

    # -- transitions ---------------------------------------------------------------------
    def record_start(self, function: PciFunction, direction: Direction) -> JournalEntry:
        """Record ``function`` as the engine found it; call before its first write.

        When it goes to vfio from a host state (a non-vfio driver or none, and no vfio
        override), that state is also its origin and is written now. A function already in
        vfio mode keeps the origin on file. If a transition record is already
        there (a crashed run that was not recovered), its originals are kept: they are the
        state before the first write, which a later record can no longer see.
        """
        bdf = function.bdf
        vendor_device = _vendor_device(function)
        stamp = self.now()
        previous = self._read(TRANSITION, bdf)
        original_driver, original_override = function.driver, function.driver_override
        if previous is not None and not previous.corrupt:
            if previous.vendor_device == vendor_device:
                original_driver = previous.original_driver
                original_override = previous.original_override
            log.warning(
                "journal: replacing an unrecovered transition",
                bdf=bdf,
                previous_direction=previous.direction.value if previous.direction else None,
                steps_done=list(previous.steps_done),
            )
        # A function on (or pinned by override to) a vfio driver is already in vfio mode:
        # its origin, if we ever knew it, is on file and must not be overwritten by this state.
        in_vfio_mode = is_vfio_driver(original_driver) or is_vfio_driver(original_override)
        entry = JournalEntry(
            bdf=bdf,
            record=TRANSITION,
            direction=direction,
            vendor_device=vendor_device,
            original_driver=original_driver,
            original_override=original_override,
            started_at=stamp,
            updated_at=stamp,
            pid=os.getpid(),
        )
        if direction is Direction.TO_VFIO and not in_vfio_mode:
            self._write(replace(entry, record=ORIGIN))
            entry = replace(entry, origin_created=True)
        self._write(entry)
        log.debug("journal: transition recorded", bdf=bdf, direction=direction.value)
        return entry

    def mark_step(self, bdf: str, step: str) -> JournalEntry:
        """Append ``step`` to the function's transition record (atomically rewritten)."""
        entry = self._read(TRANSITION, bdf)
        if entry is None or entry.corrupt:
            raise JournalError(
                f"no transition is recorded for {bdf}; cannot mark step {step!r}",
                bdf=bdf,
                step=step,
                remedy="this is a bug: the engine must call record_start first",
            )
        updated = replace(entry, steps_done=(*entry.steps_done, step), updated_at=self.now())
        self._write(updated)
        return updated

    def complete(self, bdf: str) -> None:
        """The function reached its target: drop the transition.

        The origin stays, also after a return to the host: it then says how the function was
        found and is again, so the next run leaves it so (a function found unbound is not
        probed onto its native driver). :meth:`forget_origin` drops it once the function is
        seen in another host state.
        """
        self._remove(TRANSITION, bdf)

    def abort(self, bdf: str) -> None:
        """The function is back in its start state: drop the transition.

        The origin stays: a function rolled back from a bind is in the host state its origin
        records, one rolled back from a return is in vfio mode again. Call only after a
        successful rollback: a function left in neither state keeps its record, so the next
        run sees it in :meth:`pending`.
        """
        self._remove(TRANSITION, bdf)

    def pending(self) -> list[JournalEntry]:
        """Transitions left by runs that died, in BDF order, corrupt ones included.

        Also removes stale temporary files (a run killed between creating one and renaming
        it); corrupt records are quarantined and returned with ``problem`` set. Read-only:
        nothing is removed or renamed, and a missing state directory has no records.
        """
        if self.readonly and not os.path.isdir(self.state_dir):
            return []
        with self._dir() as dir_fd:
            names = sorted(os.listdir(dir_fd))
            for name in names:
                if name.startswith(_TMP_PREFIX) and not self.readonly:
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=dir_fd)
                    log.info("journal: removed a stale temporary file", name=name)
        entries: list[JournalEntry] = []
        for name in names:
            match = _NAME.match(name)
            if match is None or not name.startswith(_PREFIX[TRANSITION]):
                continue
            address = PciAddress.from_sysfs_name(match["bdf"])
            if address is None or str(address) != match["bdf"]:
                entries.append(self._quarantine(name, None, "the file name is not a PCI address"))
                continue
            entry = self._read(TRANSITION, match["bdf"])
            if entry is not None:
                entries.append(entry)
        return entries

    def transition(self, bdf: str) -> Optional[JournalEntry]:
        """The function's transition record, if one is in flight (or was left behind)."""
        return self._read(TRANSITION, bdf)

    # -- origins -------------------------------------------------------------------------
    def original(self, bdf: str, *, vendor_device: Optional[str] = None) -> Optional[JournalEntry]:
        """Where ``bdf`` came from before it was first moved to vfio; ``None`` if unknown.

        With ``vendor_device`` ("1eff:1220"), a record for another device at the same address
        (hot-plug, a VF reshuffle) is ignored and removed rather than trusted. A corrupt
        record is quarantined and reads as ``None`` (logged): the caller falls back to the
        native driver from modules.alias.
        """
        if self.readonly and not os.path.isdir(self.state_dir):
            return None
        entry = self._read(ORIGIN, bdf)
        if entry is None or entry.corrupt:
            return None
        if vendor_device is not None and entry.vendor_device != vendor_device.lower():
            if self.readonly:
                return None
            log.warning(
                "journal: origin is for another device; ignored",
                bdf=bdf,
                recorded=entry.vendor_device,
                present=vendor_device,
            )
            self._remove(ORIGIN, bdf)
            return None
        return entry

    def forget_origin(self, bdf: str) -> None:
        """Drop the origin of a function someone else has changed since (it is over)."""
        self._remove(ORIGIN, bdf)

    # -- files ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _dir(self, *, writing: bool = False) -> Iterator[int]:
        if writing and self.readonly:
            raise RuntimeError("a read-only journal (dry run) was asked to write")
        fd = open_state_dir(self.state_dir, uid=self.uid)
        try:
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _name(record: str, bdf: str) -> str:
        address = PciAddress.parse(bdf)  # UsageError for anything that is not a BDF
        return f"{_PREFIX[record]}{address}{_SUFFIX}"

    def _read(self, record: str, bdf: str) -> Optional[JournalEntry]:
        name = self._name(record, bdf)
        canonical = str(PciAddress.parse(bdf))
        with self._dir() as dir_fd:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno == errno_mod.ELOOP:
                    return self._quarantine(name, canonical, "it is a symlink", dir_fd=dir_fd)
                return self._quarantine(
                    name, canonical, f"unreadable: {exc.strerror}", dir_fd=dir_fd
                )
            try:
                problem, data = self._load(fd)
            finally:
                os.close(fd)
            if problem is None:
                try:
                    return JournalEntry.from_json(data, record=record, bdf=canonical)
                except ValueError as exc:
                    problem = str(exc)
            return self._quarantine(name, canonical, problem, dir_fd=dir_fd)

    @staticmethod
    def _load(fd: int) -> tuple[Optional[str], object]:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file", None
        if st.st_size > _MAX_RECORD:
            return f"{st.st_size} bytes, too large for a record", None
        try:
            raw = os.read(fd, _MAX_RECORD + 1)
            return None, json.loads(raw.decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            return f"not valid JSON ({type(exc).__name__}: {exc})", None

    def _quarantine(
        self, name: str, bdf: Optional[str], problem: str, *, dir_fd: Optional[int] = None
    ) -> JournalEntry:
        """Rename a bad record to ``NAME.corrupt`` (or ``NAME.N.corrupt``) and report it."""
        record = ORIGIN if name.startswith(_PREFIX[ORIGIN]) else TRANSITION
        if self.readonly:
            return JournalEntry(bdf=bdf, record=record, problem=problem)
        if dir_fd is None:
            with self._dir() as fd:
                return self._quarantine(name, bdf, problem, dir_fd=fd)
        target: Optional[str] = None
        for attempt in range(100):
            candidate = f"{name}{_CORRUPT}" if attempt == 0 else f"{name}.{attempt}{_CORRUPT}"
            try:
                os.stat(candidate, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                target = candidate
                break
            except OSError:
                continue
        if target is not None:
            try:
                os.rename(name, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                os.fsync(dir_fd)
            except OSError as exc:
                problem = f"{problem}; could not quarantine it: {exc.strerror}"
                target = None
        path = os.path.join(self.state_dir, target) if target is not None else None
        log.error(
            "journal: corrupt record quarantined",
            bdf=bdf,
            record=record,
            file=os.path.join(self.state_dir, name),
            quarantined_as=path,
            problem=problem,
        )
        return JournalEntry(bdf=bdf, record=record, problem=problem, quarantined_as=path)

    def _write(self, entry: JournalEntry) -> None:
        """Atomic, durable replace of the entry's file; :class:`JournalError` on failure."""
        if entry.bdf is None:
            raise JournalError("a journal entry without a PCI address cannot be written")
        name = self._name(entry.record, entry.bdf)
        payload = (json.dumps(entry.to_json(), indent=1, sort_keys=True) + "\n").encode()
        tmp = f"{_TMP_PREFIX}{name}.{os.getpid()}.{secrets.token_hex(4)}"
        with self._dir(writing=True) as dir_fd:
            try:
                fd = os.open(
                    tmp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=dir_fd,
                )
                try:
                    view = memoryview(payload)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                os.fsync(dir_fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
                raise self._error(exc, "write", name, entry.bdf) from exc

    def _remove(self, record: str, bdf: str) -> None:
        name = self._name(record, bdf)
        with self._dir(writing=True) as dir_fd:
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                return
            except OSError as exc:
                raise self._error(exc, "remove", name, bdf) from exc
            try:
                os.fsync(dir_fd)
            except OSError as exc:
                raise self._error(exc, "sync", name, bdf) from exc

    def _error(self, exc: OSError, verb: str, name: str, bdf: str) -> JournalError:
        path = os.path.join(self.state_dir, name)
        return JournalError(
            f"cannot {verb} the journal record {path}: {exc.strerror}",
            bdf=bdf,
            path=path,
            errno=exc.errno,
            step="journal",
            remedy="the state directory must be writable and not full "
            "(default /run/vfio-manager); nothing was written to this function",
        )


__all__ = ["ORIGIN", "TRANSITION", "Journal", "JournalEntry", "JournalError"]

"""What a function looked like before we touched it, kept where a killed run can find it.

Two records per function, one file each, named by its canonical BDF: a *transition*
(``journal-BDF.json``), written before the first write and dropped when the function
arrived (or is back where it started), which a killed run leaves for the next to finish or
roll back (:meth:`Journal.pending`); and an *origin* (``origin-BDF.json``), the driver and
override found before the first move to vfio, kept while the function is in vfio mode or so
again, dropped once someone else changed it. Files go through the state directory's gateway;
an unreadable one is set aside as ``*.corrupt``. The caller holds the node lock.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from vfio_manager.errors import VfioManagerError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import Direction, is_vfio_driver
from vfio_manager.kernel.model import PciFunction
from vfio_manager.log import get_logger
from vfio_manager.safety.statedir import DEFAULT_STATE_DIR, StateDir, UnusableFile

log = get_logger("vfio_manager.safety.journal")

SCHEMA_VERSION = 1
TRANSITION = "transition"
ORIGIN = "origin"
_PREFIX = {TRANSITION: "journal-", ORIGIN: "origin-"}
_SUFFIX = ".json"
_CORRUPT = ".corrupt"
_MAX_RECORD = 256 * 1024  # the largest record (a page of override, escaped) is under 64 KiB
_MAX_OVERRIDE = 4095  # the kernel refuses a driver_override of a page or more
_NAME_MAX = 255  # bytes in a path component
_NOTHING_WRITTEN = "nothing was written to this function"
_RECORD_KEPT = (
    "the record is kept: the next run finds the function where this run left it and drops "
    "the record then"
)
_OTHER_DEVICE_KEPT = "the record (for another device) is kept and ignored again next time"
_NAME = re.compile(r"^(journal|origin)-(?P<bdf>[^/]+)\.json$")


class JournalError(VfioManagerError):
    """The journal could not be written: the engine must not write to the function then."""


@dataclass(frozen=True)
class JournalEntry:
    """One record: a transition in flight, or a function's origin.

    ``original_driver``/``original_override``: the state before the first write (``None``:
    none). A driver link that named no usable driver is ``None`` with
    ``original_driver_unknown`` set. An unreadable record has only ``bdf`` (``None`` if even
    its name was unusable), ``problem`` and ``quarantined_as`` (where it went) set.
    """

    bdf: Optional[str]
    record: str = TRANSITION
    direction: Optional[Direction] = None
    vendor_device: Optional[str] = None
    original_driver: Optional[str] = None
    original_override: Optional[str] = None
    original_driver_unknown: bool = False
    started_at: Optional[str] = None
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
            "original_driver_unknown": self.original_driver_unknown,
            "started_at": self.started_at,
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
        steps = data.get("steps_done", [])  # accepted when present, unused
        if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
            raise ValueError("steps_done is not a list of strings")
        pid = data.get("pid")
        if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)):
            raise ValueError("pid is not an integer")
        created = data.get("origin_created", False)
        if not isinstance(created, bool):
            raise ValueError("origin_created is not a boolean")
        unknown = data.get("original_driver_unknown", False)
        if not isinstance(unknown, bool):
            raise ValueError("original_driver_unknown is not a boolean")
        driver = _checked(data, "original_driver", driver_name_problem)
        if unknown and driver is not None:
            raise ValueError("original_driver is set, but marked unknown")
        return cls(
            bdf=bdf,
            record=record,
            direction=direction,
            vendor_device=_str(data, "vendor_device"),
            original_driver=driver,
            original_override=_checked(data, "original_override", override_problem),
            original_driver_unknown=unknown,
            started_at=_str(data, "started_at"),
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


def driver_name_problem(value: str) -> Optional[str]:
    """Why ``value`` cannot be a driver name in a sysfs path (``drivers/NAME/bind``), if so;
    checked on write and on read alike."""
    if value in {"", ".", ".."} or any(c in value for c in "/\n\0"):
        return f"{value!r} is not a driver name"
    if len(value.encode("utf-8", "surrogatepass")) > _NAME_MAX:
        return f"a driver name of {len(value)} characters is not a driver name"
    return None


def override_problem(value: str) -> Optional[str]:
    """Why ``value`` cannot be a ``driver_override`` sysfs showed (it is written back as it
    was), if so; checked on write and on read alike."""
    if value == "":
        return "is empty (an unset override is recorded as null)"
    if "\n" in value or "\0" in value:
        return "holds a newline or NUL, which sysfs never shows"
    if len(value) > _MAX_OVERRIDE:
        return f"is {len(value)} characters long, more than sysfs shows"
    return None


def _checked(
    data: dict[str, Any], key: str, problem_of: Callable[[str], Optional[str]]
) -> Optional[str]:
    value = _str(data, key)
    problem = problem_of(value) if value is not None else None
    if problem is not None:
        raise ValueError(f"{key} {problem}")
    return value


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _vendor_device(function: PciFunction) -> str:
    return f"{function.vendor:04x}:{function.device:04x}"


class Journal:
    """Transition and origin records of one node, in ``state_dir``; ``now`` (ISO-8601
    timestamps) is injectable. Each method opens the state directory afresh: a ``Journal``
    holds no descriptor. ``readonly`` (a dry run) never renames, removes or creates."""

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
        self.readonly = readonly
        self._set_aside: list[JournalEntry] = []

    def take_set_aside(self) -> list[JournalEntry]:
        """The unreadable records found since the last call (set aside, or in a dry run
        left where they are), so the caller can say what it did without them."""
        found, self._set_aside = self._set_aside, []
        return found

    def record_start(self, function: PciFunction, direction: Direction) -> JournalEntry:
        """Record ``function`` as found, before its first write; going to vfio from a host
        state, that state is also its origin. The originals of a transition record left
        behind (a crash not yet recovered) are kept: they are the state before its writes."""
        bdf = function.bdf
        vendor_device = _vendor_device(function)
        previous = self._read(TRANSITION, bdf)
        original_driver, original_override = function.driver, function.driver_override or None
        unknown = False
        if original_driver is not None and driver_name_problem(original_driver) is not None:
            log.warning(
                "journal: the driver link names no usable driver; recorded as unknown",
                bdf=bdf,
                driver=original_driver,
            )
            original_driver, unknown = None, True
        if original_override is not None and override_problem(original_override) is not None:
            raise JournalError(
                f"cannot record {bdf}: its driver_override {override_problem(original_override)}",
                bdf=bdf,
                step="journal",
                remedy=f"{_NOTHING_WRITTEN}; check the function's driver_override in sysfs",
            )
        if previous is not None and not previous.corrupt:
            if previous.vendor_device == vendor_device:
                original_driver = previous.original_driver
                original_override = previous.original_override
                unknown = previous.original_driver_unknown
            log.warning(
                "journal: replacing an unrecovered transition",
                bdf=bdf,
                previous_direction=previous.direction.value if previous.direction else None,
            )
        # already in vfio mode: its origin, if ever known, is on file and stays
        in_vfio_mode = is_vfio_driver(original_driver) or is_vfio_driver(original_override)
        entry = JournalEntry(
            bdf=bdf,
            record=TRANSITION,
            direction=direction,
            vendor_device=vendor_device,
            original_driver=original_driver,
            original_override=original_override,
            original_driver_unknown=unknown,
            started_at=self.now(),
            pid=os.getpid(),
        )
        if direction is Direction.TO_VFIO and not in_vfio_mode:
            self._write(replace(entry, record=ORIGIN), consequence=_NOTHING_WRITTEN)
            entry = replace(entry, origin_created=True)
        self._write(entry, consequence=_NOTHING_WRITTEN)
        log.debug("journal: transition recorded", bdf=bdf, direction=direction.value)
        return entry

    def drop_transition(self, bdf: str) -> None:
        """The function reached its target, or is back in its start state: drop its
        transition record. The origin stays (see the module docstring)."""
        self._remove(TRANSITION, bdf, consequence=_RECORD_KEPT)

    def pending(self) -> list[JournalEntry]:
        """Transitions left by runs that died, in BDF order, corrupt ones included (set
        aside); stale temporary files are removed. :class:`JournalError` when the directory
        cannot be listed."""
        with self._dir() as state:
            if state is None:
                return []
            try:
                if not self.readonly:
                    for name in state.sweep_temporaries():
                        log.info("journal: removed a stale temporary file", name=name)
                names = state.names()
            except OSError as exc:
                raise JournalError(
                    f"cannot list the journal in {self.state_dir}: {exc.strerror}",
                    path=self.state_dir,
                    errno=exc.errno,
                    step="journal",
                    remedy="the state directory must be readable (default /run/vfio-manager); "
                    "nothing was written, since an interrupted run could not be looked for",
                ) from exc
            entries: list[JournalEntry] = []
            for name in names:
                match = _NAME.match(name)
                if match is None or not name.startswith(_PREFIX[TRANSITION]):
                    continue
                address = PciAddress.from_sysfs_name(match["bdf"])
                if address is None or str(address) != match["bdf"]:
                    entries.append(
                        self._quarantine(state, name, None, "the file name is not a PCI address")
                    )
                    continue
                entry = self._read_in(state, TRANSITION, match["bdf"])
                if entry is not None:
                    entries.append(entry)
        return entries

    def transition(self, bdf: str) -> Optional[JournalEntry]:
        """The function's transition record, if one is in flight (or was left behind)."""
        return self._read(TRANSITION, bdf)

    def original(self, bdf: str, *, vendor_device: Optional[str] = None) -> Optional[JournalEntry]:
        """Where ``bdf`` came from before it was first moved to vfio; ``None`` if unknown or
        corrupt (set aside). A record for another ``vendor_device`` is removed, not trusted."""
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
            self._remove(ORIGIN, bdf, consequence=_OTHER_DEVICE_KEPT)
            return None
        return entry

    def forget_origin(self, bdf: str) -> None:
        """Drop the origin of a function someone else has changed since (it is over)."""
        self._remove(ORIGIN, bdf, consequence=_RECORD_KEPT)

    @contextlib.contextmanager
    def _dir(self) -> Iterator[Optional[StateDir]]:
        """The state directory, checked; ``None`` in a dry run when it does not exist."""
        if self.readonly:
            state = StateDir.open_existing(self.state_dir, uid=self.uid)
        else:
            state = StateDir.open(self.state_dir, uid=self.uid)
        if state is None:
            yield None
            return
        with state:
            yield state

    def _writable(self) -> StateDir:
        """The state directory for a write (created if missing); never in a dry run."""
        if self.readonly:
            raise RuntimeError("a read-only journal (dry run) was asked to write")
        return StateDir.open(self.state_dir, uid=self.uid)

    @staticmethod
    def _name(record: str, bdf: str) -> str:
        address = PciAddress.parse(bdf)  # UsageError for anything that is not a BDF
        return f"{_PREFIX[record]}{address}{_SUFFIX}"

    def _read(self, record: str, bdf: str) -> Optional[JournalEntry]:
        with self._dir() as state:
            return None if state is None else self._read_in(state, record, bdf)

    def _read_in(self, state: StateDir, record: str, bdf: str) -> Optional[JournalEntry]:
        name = self._name(record, bdf)
        canonical = str(PciAddress.parse(bdf))
        try:
            raw = state.read(name, limit=_MAX_RECORD)
        except UnusableFile as bad:
            return self._quarantine(state, name, canonical, bad.problem)
        if raw is None:
            return None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            problem = f"not valid JSON ({type(exc).__name__}: {exc})"
        else:
            try:
                return JournalEntry.from_json(data, record=record, bdf=canonical)
            except ValueError as exc:
                problem = str(exc)
        return self._quarantine(state, name, canonical, problem)

    def _quarantine(
        self, state: StateDir, name: str, bdf: Optional[str], problem: str
    ) -> JournalEntry:
        """Set a bad record aside as ``NAME.corrupt`` (or ``NAME.N.corrupt``); report it."""
        record = ORIGIN if name.startswith(_PREFIX[ORIGIN]) else TRANSITION
        if self.readonly:
            entry = JournalEntry(bdf=bdf, record=record, problem=problem)
            self._set_aside.append(entry)
            return entry
        path: Optional[str] = None
        try:
            path = state.path_of(state.set_aside(name, _CORRUPT))
        except OSError as exc:
            problem = f"{problem}; could not set it aside: {exc.strerror}"
        log.error(
            "journal: corrupt record quarantined",
            bdf=bdf,
            record=record,
            file=state.path_of(name),
            quarantined_as=path,
            problem=problem,
        )
        entry = JournalEntry(bdf=bdf, record=record, problem=problem, quarantined_as=path)
        self._set_aside.append(entry)
        return entry

    def _write(self, entry: JournalEntry, *, consequence: str) -> None:
        """Atomic, durable replace of the entry's file; :class:`JournalError` on failure."""
        if entry.bdf is None:
            raise JournalError("a journal entry without a PCI address cannot be written")
        name = self._name(entry.record, entry.bdf)
        payload = (json.dumps(entry.to_json(), indent=1, sort_keys=True) + "\n").encode()
        self._reads_back(entry, payload, consequence)
        with self._writable() as state:
            try:
                state.replace(name, payload)
            except OSError as exc:
                raise self._error(exc, "write", name, entry.bdf, consequence) from exc

    @staticmethod
    def _reads_back(entry: JournalEntry, payload: bytes, consequence: str) -> None:
        """Refuse to write a record that reading would set aside: the same checks, first."""
        problem: Optional[str] = None
        if len(payload) > _MAX_RECORD:
            problem = f"{len(payload)} bytes, more than a record may have"
        else:
            try:
                back = JournalEntry.from_json(
                    json.loads(payload), record=entry.record, bdf=entry.bdf or ""
                )
            except ValueError as exc:
                problem = str(exc)
            else:
                if back != entry:
                    problem = "it would read back different"
        if problem is not None:
            raise JournalError(
                f"the journal record for {entry.bdf} would not read back ({problem})",
                bdf=entry.bdf,
                step="journal",
                remedy=f"{consequence}; this is a bug, please report it with the function's "
                "driver and driver_override",
            )

    def _remove(self, record: str, bdf: str, *, consequence: str) -> None:
        name = self._name(record, bdf)
        with self._writable() as state:
            try:
                state.remove(name)
            except OSError as exc:
                raise self._error(exc, "remove", name, bdf, consequence) from exc

    def _error(
        self, exc: OSError, verb: str, name: str, bdf: str, consequence: str
    ) -> JournalError:
        path = os.path.join(self.state_dir, name)
        return JournalError(
            f"cannot {verb} the journal record {path}: {exc.strerror}",
            bdf=bdf,
            path=path,
            errno=exc.errno,
            step="journal",
            remedy=f"the state directory must be writable and not full "
            f"(default /run/vfio-manager); {consequence}",
        )

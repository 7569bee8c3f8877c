"""What a function looked like before we touched it, kept where a killed run can find it.

Per function, named by its BDF: a *transition* record (``journal-BDF.json``), from before the
first write until the function arrived or is back, which a killed run leaves for the next; an
*origin* (``origin-BDF.json``), how it was found before it first moved to vfio; and for a PF
whose VFs we provision, its *SR-IOV origin* (``sriov-BDF.json``): its ``sriov_numvfs`` and
``sriov_drivers_autoprobe`` before our first write, until they are restored.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
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
SRIOV = "sriov"
_PREFIX = {TRANSITION: "journal-", ORIGIN: "origin-", SRIOV: "sriov-"}


def _record_of(name: str) -> str:
    """The kind of record a journal file name holds."""
    return next((r for r, p in _PREFIX.items() if name.startswith(p)), TRANSITION)


_TRANSITION_NAME = re.compile(r"^journal-(?P<bdf>[^/]+)\.json$")
_MAX_RECORD = 256 * 1024  # the largest record (a page of override, escaped) is under 64 KiB
_MAX_OVERRIDE = 4095  # the kernel refuses a driver_override of a page or more
_NAME_MAX = 255  # bytes in a path component
_NOTHING_WRITTEN = "nothing was written to this function"
_RECORD_KEPT = (
    "the record is kept: the next run finds the function where this run left it and drops "
    "the record then"
)
_OTHER_DEVICE_KEPT = "the record (for another device) is kept and ignored again next time"
NEWER_REMEDY = (
    "it is kept where it is: run the vfio-manager release that wrote it to settle this "
    "function, or move the record out of the state directory once the function is where it "
    "belongs"
)
_TYPES = {str: "a string", int: "an integer", bool: "a boolean"}
_FIELDS: dict[str, type] = {  # a record's fields past its name; all but the booleans nullable
    "direction": str,
    "vendor_device": str,
    "original_driver": str,
    "original_override": str,
    "original_driver_unknown": bool,
    "started_at": str,
    "pid": int,
    "origin_created": bool,
    "original_numvfs": int,  # an SR-IOV origin's
    "original_autoprobe": int,
}
_SRIOV_FIELDS = ("original_numvfs", "original_autoprobe")


class JournalError(VfioManagerError):
    """The journal could not be written (so neither may the function be)."""


@dataclass(frozen=True)
class JournalEntry:
    """One record, a transition or an origin; an unreadable one has only ``bdf`` (if its
    name was one), ``problem`` and ``quarantined_as`` (or ``newer_schema``) set."""

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
    original_numvfs: Optional[int] = None
    original_autoprobe: Optional[int] = None
    problem: Optional[str] = None
    quarantined_as: Optional[str] = field(default=None, compare=False)
    newer_schema: Optional[int] = None  # written by a later release: kept, never acted on

    @property
    def corrupt(self) -> bool:
        return self.problem is not None

    def to_json(self) -> dict[str, Any]:
        doc = {"version": SCHEMA_VERSION, "record": self.record, "bdf": self.bdf}
        keys = [k for k in _FIELDS if self.record == SRIOV or k not in _SRIOV_FIELDS]
        doc.update((key, getattr(self, key)) for key in keys)
        return {**doc, "direction": self.direction.value if self.direction else None}

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
        values: dict[str, Any] = {
            k: data.get(k, False if t is bool else None) for k, t in _FIELDS.items()
        }
        for key, kind in _FIELDS.items():
            required = key == "direction" and record != SRIOV
            if (values[key] is not None or required) and type(values[key]) is not kind:
                raise ValueError(f"{key} is not {_TYPES[kind]}")
        steps = data.get("steps_done", [])  # accepted when present, unused
        if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
            raise ValueError("steps_done is not a list of strings")
        for key, problem_of in (
            ("original_driver", driver_name_problem),
            ("original_override", override_problem),
        ):
            problem = problem_of(values[key]) if values[key] is not None else None
            if problem is not None:
                raise ValueError(f"{key} {problem}")
        if values["original_driver_unknown"] and values["original_driver"] is not None:
            raise ValueError("original_driver is set, but marked unknown")
        direction = Direction(values["direction"]) if record != SRIOV else None
        return cls(bdf, record, **{**values, "direction": direction})


def _newer_schema(data: object) -> Optional[int]:
    version = data.get("version") if isinstance(data, dict) else None
    return version if type(version) is int and version > SCHEMA_VERSION else None


def _schema_on_file(state: StateDir, name: str) -> Optional[int]:
    """The schema of a later release's record at ``name``, if that is what is there."""
    try:
        raw = state.read(name, limit=_MAX_RECORD)
        return _newer_schema(json.loads(raw.decode("utf-8"))) if raw is not None else None
    except (UnusableFile, OSError, ValueError, RecursionError):
        return None


def driver_name_problem(value: str) -> Optional[str]:
    """Why ``value`` cannot be a driver name in a sysfs path (``drivers/NAME/bind``), if so."""
    if value in {"", ".", ".."} or any(c in value for c in "/\n\0"):
        return f"{value!r} is not a driver name"
    if len(value.encode("utf-8", "surrogatepass")) > _NAME_MAX:
        return f"a driver name of {len(value)} characters is not a driver name"
    return None


def override_problem(value: str) -> Optional[str]:
    """Why ``value`` cannot be a ``driver_override`` sysfs showed, if so."""
    if value == "":
        return "is empty (an unset override is recorded as null)"
    if "\n" in value or "\0" in value:
        return "holds a newline or NUL, which sysfs never shows"
    if len(value) > _MAX_OVERRIDE:
        return f"is {len(value)} characters long, more than sysfs shows"
    return None


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


class Journal:
    """Transition and origin records of one node, in ``state_dir``; each method opens it
    afresh. ``readonly`` (a dry run) never renames, removes or creates."""

    def __init__(
        self,
        state_dir: str = DEFAULT_STATE_DIR,
        *,
        now: Callable[[], str] = _utc_now,
        readonly: bool = False,
    ) -> None:
        self.state_dir, self.now, self.readonly = state_dir, now, readonly
        self._set_aside: list[JournalEntry] = []

    def take_set_aside(self) -> list[JournalEntry]:
        """The unreadable records found since the last call, for the caller to tell of."""
        found, self._set_aside = self._set_aside, []
        return found

    def record_start(self, function: PciFunction, direction: Direction) -> JournalEntry:
        """Record ``function`` as found (going to vfio from the host, also as its origin);
        a record left behind by a crash keeps its originals."""
        bdf = function.bdf
        vendor_device = f"{function.vendor:04x}:{function.device:04x}"
        previous = self._read(TRANSITION, bdf)
        driver, override, unknown = function.driver, function.driver_override or None, False
        if driver is not None and driver_name_problem(driver) is not None:
            log.warning(
                "journal: the driver link names no usable driver; recorded as unknown",
                bdf=bdf,
                driver=driver,
            )
            driver, unknown = None, True
        if override is not None and override_problem(override) is not None:
            raise JournalError(
                f"cannot record {bdf}: its driver_override {override_problem(override)}",
                bdf=bdf,
                step="journal",
                remedy=f"{_NOTHING_WRITTEN}; check the function's driver_override in sysfs",
            )
        if previous is not None and not previous.corrupt:
            if previous.vendor_device == vendor_device:
                driver, override = previous.original_driver, previous.original_override
                unknown = previous.original_driver_unknown
            was = previous.direction.value if previous.direction else None
            log.warning(
                "journal: replacing an unrecovered transition", bdf=bdf, previous_direction=was
            )
        entry = JournalEntry(
            bdf=bdf,
            direction=direction,
            vendor_device=vendor_device,
            original_driver=driver,
            original_override=override,
            original_driver_unknown=unknown,
            started_at=self.now(),
            pid=os.getpid(),
        )
        # already in vfio mode: its origin, if ever known, is on file and stays
        if direction is Direction.TO_VFIO and not (
            is_vfio_driver(driver) or is_vfio_driver(override)
        ):
            self._write(replace(entry, record=ORIGIN), bdf)
            entry = replace(entry, origin_created=True)
        self._write(entry, bdf)
        log.debug("journal: transition recorded", bdf=bdf, direction=direction.value)
        return entry

    def drop_transition(self, bdf: str) -> None:
        """The function reached its target, or is back in its start state: drop its record."""
        self._store(TRANSITION, bdf, None, _RECORD_KEPT)

    def pending(self) -> list[JournalEntry]:
        """Transitions left by runs that died, in BDF order, corrupt ones included."""
        state = self._open()
        if state is None:
            return []
        with state:
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
            for match in filter(None, map(_TRANSITION_NAME.match, names)):
                address = PciAddress.from_sysfs_name(match["bdf"])
                if address is None or str(address) != match["bdf"]:
                    problem = "the file name is not a PCI address"
                    entries.append(self._quarantine(state, match[0], None, problem))
                elif (entry := self._read_in(state, TRANSITION, match["bdf"])) is not None:
                    entries.append(entry)
        return entries

    def transition(self, bdf: str) -> Optional[JournalEntry]:
        """The function's transition record, if one is in flight (or was left behind)."""
        return self._read(TRANSITION, bdf)

    def original(self, bdf: str, *, vendor_device: Optional[str] = None) -> Optional[JournalEntry]:
        """Where ``bdf`` came from before it first moved to vfio, if known (a record for
        another ``vendor_device`` is removed)."""
        entry = self._read(ORIGIN, bdf)
        if entry is None or entry.corrupt:
            return None
        if vendor_device is not None and entry.vendor_device != vendor_device.lower():
            if not self.readonly:
                log.warning(
                    "journal: origin is for another device; ignored",
                    bdf=bdf,
                    recorded=entry.vendor_device,
                    present=vendor_device,
                )
                self._store(ORIGIN, bdf, None, _OTHER_DEVICE_KEPT)
            return None
        return entry

    def record_sriov(self, pf: PciFunction) -> JournalEntry:
        """Record the PF's ``sriov_numvfs`` and autoprobe as found, before our first write to
        either; a record for it already on file keeps its originals."""
        vendor_device = f"{pf.vendor:04x}:{pf.device:04x}"
        kept = self.sriov(pf.bdf, vendor_device=vendor_device)
        if kept is not None:
            return kept
        entry = JournalEntry(
            bdf=pf.bdf,
            record=SRIOV,
            vendor_device=vendor_device,
            original_driver=pf.driver,
            started_at=self.now(),
            pid=os.getpid(),
            original_numvfs=pf.sriov_numvfs or 0,
            original_autoprobe=int(pf.sriov_autoprobe is not False),
        )
        self._write(entry, pf.bdf)
        log.debug("journal: SR-IOV origin recorded", bdf=pf.bdf)
        return entry

    def sriov(self, bdf: str, *, vendor_device: Optional[str] = None) -> Optional[JournalEntry]:
        """The PF's SR-IOV origin, if we provisioned its VFs (one for another device: none)."""
        entry = self._read(SRIOV, bdf)
        if entry is None or entry.corrupt:
            return None
        if vendor_device is not None and entry.vendor_device != vendor_device:
            return None
        return entry

    def drop_sriov(self, bdf: str) -> None:
        """The PF's ``sriov_numvfs`` and autoprobe are back as found: drop its SR-IOV origin."""
        self._store(SRIOV, bdf, None, _RECORD_KEPT)

    def forget_origin(self, bdf: str) -> None:
        """Drop the origin of a function someone else has changed since (it is over)."""
        self._store(ORIGIN, bdf, None, _RECORD_KEPT)

    def _open(self) -> Optional[StateDir]:  # a dry run creates nothing
        return (StateDir.open_existing if self.readonly else StateDir.open)(self.state_dir)

    def _read(self, record: str, bdf: str) -> Optional[JournalEntry]:
        state = self._open()
        if state is None:
            return None
        with state:
            return self._read_in(state, record, bdf)

    def _read_in(self, state: StateDir, record: str, bdf: str) -> Optional[JournalEntry]:
        canonical = str(PciAddress.parse(bdf))  # UsageError for anything that is not a BDF
        name = f"{_PREFIX[record]}{canonical}.json"
        try:
            raw = state.read(name, limit=_MAX_RECORD)
        except UnusableFile as bad:
            return self._quarantine(state, name, canonical, bad.problem)
        if raw is None:
            return None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            problem = f"not valid JSON ({type(exc).__name__}: {exc})"
            return self._quarantine(state, name, canonical, problem)
        newer = _newer_schema(data)
        if newer is not None:
            return self._keep_newer(state, name, canonical, newer)
        try:
            return JournalEntry.from_json(data, record=record, bdf=canonical)
        except ValueError as exc:
            return self._quarantine(state, name, canonical, str(exc))

    def _keep_newer(self, state: StateDir, name: str, bdf: str, schema: int) -> JournalEntry:
        """A record of a later release's schema: left in place, reported, never acted on."""
        record = _record_of(name)
        problem = (
            f"written by a newer vfio-manager (record schema {schema}; this release reads "
            f"schema {SCHEMA_VERSION})"
        )
        log.error(
            "journal: record of a newer schema kept",
            bdf=bdf,
            record=record,
            file=state.path_of(name),
            schema=schema,
            problem=problem,
        )
        entry = JournalEntry(bdf=bdf, record=record, problem=problem, newer_schema=schema)
        self._set_aside.append(entry)
        return entry

    def _quarantine(
        self, state: StateDir, name: str, bdf: Optional[str], problem: str
    ) -> JournalEntry:
        """Set a bad record aside as ``NAME.corrupt`` (or ``NAME.N.corrupt``); report it."""
        record = _record_of(name)
        path: Optional[str] = None
        if not self.readonly:
            try:
                path = state.path_of(state.set_aside(name, ".corrupt"))
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

    def _write(self, entry: JournalEntry, bdf: str) -> None:
        """Write the entry's record, refused if reading it back would set it aside."""
        payload = (json.dumps(entry.to_json(), indent=1, sort_keys=True) + "\n").encode()
        try:
            if len(payload) > _MAX_RECORD:
                raise ValueError(f"{len(payload)} bytes, more than a record may have")
            if JournalEntry.from_json(json.loads(payload), record=entry.record, bdf=bdf) != entry:
                raise ValueError("it would read back different")
        except ValueError as exc:
            raise JournalError(
                f"the journal record for {bdf} would not read back ({exc})",
                bdf=bdf,
                step="journal",
                remedy=f"{_NOTHING_WRITTEN}; this is a bug, please report it with the "
                "function's driver and driver_override",
            ) from exc
        self._store(entry.record, bdf, payload, _NOTHING_WRITTEN)

    def _store(self, record: str, bdf: str, payload: Optional[bytes], consequence: str) -> None:
        """Make ``payload`` the record's content (``None``: remove it)."""
        name = f"{_PREFIX[record]}{PciAddress.parse(bdf)}.json"
        with StateDir.open(self.state_dir) as state:
            schema = _schema_on_file(state, name)
            if schema is not None and payload is None:
                log.warning("journal: record of a newer schema kept", bdf=bdf, schema=schema)
                return
            if schema is not None:
                raise JournalError(
                    f"the journal record {state.path_of(name)} was written by a newer "
                    f"vfio-manager (record schema {schema}; this release reads schema "
                    f"{SCHEMA_VERSION}); it is not overwritten",
                    bdf=bdf,
                    path=state.path_of(name),
                    step="journal",
                    remedy=f"{NEWER_REMEDY}; {consequence}",
                )
            try:
                if payload is None:
                    state.remove(name)
                else:
                    state.replace(name, payload)
            except OSError as exc:
                path = state.path_of(name)
                verb = "remove" if payload is None else "write"
                raise JournalError(
                    f"cannot {verb} the journal record {path}: {exc.strerror}",
                    bdf=bdf,
                    path=path,
                    errno=exc.errno,
                    step="journal",
                    remedy="the state directory must be writable and not full "
                    f"(default /run/vfio-manager); {consequence}",
                ) from exc

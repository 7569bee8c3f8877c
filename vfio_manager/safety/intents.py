"""The admin's intents: "leave this function on the host", one file per function, named by
its BDF, so the daemon does not undo an ``unbind``; its JSON content is for humans (a file
that is not what we write still counts)."""

from __future__ import annotations

import errno as errno_mod
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Optional

from vfio_manager.errors import VfioManagerError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.log import get_logger
from vfio_manager.safety.lock import command_line
from vfio_manager.safety.statedir import DEFAULT_STATE_DIR, StateDir, UnusableFile

log = get_logger("vfio_manager.safety.intents")

INTENT_DIR = "intent"
_READ_LIMIT = 4096


class IntentError(VfioManagerError):
    """An intent could not be recorded or cleared (state directory not writable)."""


@dataclass(frozen=True)
class Intent:
    """One function the admin asked to leave on the host (``problem``: its file's, if any)."""

    bdf: str
    recorded_at: Optional[str] = None
    by: Optional[str] = None
    pid: Optional[int] = None
    problem: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """The reason shown in ``status`` and ``/readyz``."""
        who = f" by `{self.by}`" if self.by else ""
        when = f" at {self.recorded_at}" if self.recorded_at else ""
        text = f"left on the host by intent{who}{when}"
        return text + (f" (intent file {self.problem})" if self.problem else "")


def intents_recorded(state_dir: str) -> bool:
    """Whether the intent directory exists: ``status`` need not load the store otherwise."""
    return os.path.isdir(os.path.join(state_dir, INTENT_DIR))


class IntentStore:
    def __init__(
        self,
        state_dir: str = DEFAULT_STATE_DIR,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_dir, self.wall_clock = state_dir, wall_clock

    def add(self, bdf: str, *, command: Optional[str] = None) -> Intent:
        """Record "leave ``bdf`` on the host"; :class:`IntentError` when it cannot."""
        name = str(PciAddress.parse(bdf))  # UsageError before any path is built
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.wall_clock()))
        by = command if command is not None else command_line()
        intent = Intent(bdf=name, recorded_at=at, by=by, pid=os.getpid())
        payload = (json.dumps(intent.to_json(), sort_keys=True) + "\n").encode()
        try:
            with StateDir.open(self.state_dir) as state:
                intents = state.subdir(INTENT_DIR, create=True)
                if intents is None:
                    raise FileNotFoundError(errno_mod.ENOENT, "removed while opened")
                with intents:
                    intents.replace(name, payload)
        except OSError as exc:
            raise self._error(exc, "record", name) from exc
        log.info("intent recorded: the daemon leaves this function on the host", bdf=name)
        return intent

    def clear(self, bdfs: Iterable[str]) -> list[str]:
        """Clear the intents of ``bdfs``; returns the BDFs whose intent existed."""
        names = sorted({str(PciAddress.parse(b)) for b in bdfs})
        cleared: list[str] = []
        intents = self._existing()
        if intents is None:
            return cleared
        with intents:
            for name in names:
                try:
                    if intents.remove(name):
                        cleared.append(name)
                except OSError as exc:
                    raise self._error(exc, "clear", name) from exc
        if cleared:
            log.info("intent cleared: the daemon manages these functions again", bdfs=cleared)
        return cleared

    def read(self) -> dict[str, Intent]:
        """Every intent, by canonical BDF; ``{}`` when there is no intent directory."""
        found: dict[str, Intent] = {}
        intents = self._existing()
        if intents is None:
            return found
        with intents:
            for name in intents.names():
                address = PciAddress.from_sysfs_name(name)
                if address is not None and str(address) == name:
                    found[name] = _load(intents, name)
        return found

    def bdfs(self) -> frozenset[str]:
        return frozenset(self.read())

    def _existing(self) -> Optional[StateDir]:
        state = StateDir.open_existing(self.state_dir)
        if state is None:
            return None
        with state:
            return state.subdir(INTENT_DIR)

    def _error(self, exc: OSError, verb: str, name: str) -> IntentError:
        path = os.path.join(self.state_dir, INTENT_DIR)
        return IntentError(
            f"cannot {verb} the intent {os.path.join(path, name)}: {exc.strerror}",
            path=path,
            errno=exc.errno,
            remedy="the state directory must be writable and not full (default /run/vfio-manager)",
        )


def _load(intents: StateDir, name: str) -> Intent:
    try:
        data = intents.read(name, limit=_READ_LIMIT)
    except UnusableFile as bad:
        return Intent(bdf=name, problem=bad.problem)
    if data is None:  # removed between listing and reading: honoured for this round
        return Intent(bdf=name, problem="vanished while read")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        return Intent(bdf=name, problem=f"not valid JSON ({type(exc).__name__})")
    if not isinstance(doc, dict):
        return Intent(bdf=name, problem="not a JSON object")
    at, by, pid = doc.get("recorded_at"), doc.get("by"), doc.get("pid")
    return Intent(
        bdf=name,
        recorded_at=at if isinstance(at, str) else None,
        by=by if isinstance(by, str) else None,
        pid=pid if type(pid) is int else None,
    )

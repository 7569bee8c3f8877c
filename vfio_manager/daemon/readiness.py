"""The ready file: present exactly while the node is converged.

Why a file: it is the simplest probe there is. A Kubernetes ``readinessProbe`` runs
``test -f /run/vfio-manager/ready`` (or an init container waits for it), a shell script
tests it, and it needs no port, no HTTP client and no extra container capability. Its
content is a small JSON document for a human or a tool that wants more than yes/no::

    {"converged": true, "since": "2024-05-01T12:00:00Z", "pid": 812,
     "counts": {"converged": 4, "pending": 0, "held": 0, "excluded": 1, "failed": 0,
                "intent-host": 0}}

It is written atomically (temporary file, rename; ``O_NOFOLLOW``), so a reader sees either
no file or a whole document; rewritten only when the counts change, so a steady node costs
no writes; removed as soon as the node is not converged, at start (a killed daemon may have
left one behind) and on exit. A failure to write or remove it is logged (once until it
works again) and never stops the daemon; the HTTP ``/readyz`` says the same thing.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Optional

from vfio_manager.log import get_logger
from vfio_manager.safety.statedir import remove_file, replace_file

log = get_logger("vfio_manager.daemon.readiness")

READY_FILE_NAME = "ready"


def default_ready_path(state_dir: str) -> str:
    return os.path.join(state_dir, READY_FILE_NAME)


def _iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


class ReadyFile:
    def __init__(self, path: str, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.path = os.path.abspath(path)
        self.wall_clock = wall_clock
        self._written: Optional[dict[str, int]] = None
        self._since: Optional[float] = None
        self._failing = False

    @property
    def directory(self) -> str:
        return os.path.dirname(self.path)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def update(self, converged: bool, counts: Mapping[str, int]) -> None:
        """Write the file when ``converged`` (if its content changed), remove it otherwise."""
        if not converged:
            self.remove()
            return
        if self._since is None:
            self._since = self.wall_clock()
        wanted = dict(counts)
        if wanted == self._written and self._present():
            return
        doc = {"converged": True, "since": _iso(self._since), "pid": os.getpid(), "counts": wanted}
        payload = (json.dumps(doc, sort_keys=True) + "\n").encode()
        try:
            replace_file(self.path, payload)
        except OSError as exc:
            self._written = None
            self._report("ready file not written", exc)
            return
        self._written = wanted
        self._recovered()

    def remove(self) -> None:
        """Remove the file (no error when absent); the node is not, or no longer, converged."""
        self._since = None
        self._written = None
        try:
            remove_file(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._report("ready file not removed", exc)
            return
        self._recovered()

    def _present(self) -> bool:
        try:
            os.lstat(self.path)
        except OSError:
            return False
        return True

    def _report(self, event: str, exc: OSError) -> None:
        if not self._failing:
            self._failing = True
            log.error(
                event,
                path=self.path,
                error=exc.strerror,
                remedy="make the ready file's directory exist and be writable, or point "
                "--ready-file elsewhere",
            )

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.info("ready file works again", path=self.path)


__all__ = ["READY_FILE_NAME", "ReadyFile", "default_ready_path"]

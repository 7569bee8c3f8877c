"""Crash recovery: a run finds the journal records a killed run left, and settles each one.

A record whose function is a target of this run in the same direction is *finished*: the
plan, computed from the current sysfs state, takes it the rest of the way (the journal keeps
the originals of the first attempt). Any other record is *rolled back* to the override and
driver the function had before the killed run's first write. Either way the run says which.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import Direction
from vfio_manager.log import get_logger
from vfio_manager.pipeline.engine import Engine
from vfio_manager.safety.journal import Journal

log = get_logger("vfio_manager.pipeline.recovery")

_VERB = {Direction.TO_VFIO: "bind to vfio", Direction.TO_HOST: "return to the host"}


@dataclass(frozen=True)
class Recovery:
    """What recovery did: one note per record, whether it wrote anything, and which
    functions this run is to finish (their records are completed once they converge)."""

    notes: tuple[str, ...] = ()
    wrote: bool = False
    finishing: frozenset[PciAddress] = frozenset()


def recover(
    journal: Journal,
    engine: Engine,
    *,
    direction: Direction,
    targets: Collection[PciAddress],
) -> Recovery:
    """Settle every pending journal record; see the module docstring for the policy."""
    notes: list[str] = []
    finishing: set[PciAddress] = set()
    before = engine.kernel.sysfs.writes
    for entry in journal.pending():
        if entry.corrupt or entry.bdf is None or entry.direction is None:
            notes.append(
                f"a journal record{' for ' + entry.bdf if entry.bdf else ''} was unreadable "
                f"({entry.problem}); set aside as {entry.quarantined_as}; the native driver "
                "comes from modules.alias instead"
            )
            continue
        address = PciAddress.parse(entry.bdf)
        what = _VERB[entry.direction]
        started = f"started {entry.started_at} by PID {entry.pid}"
        if not engine.kernel.exists(address):
            journal.abort(entry.bdf)
            notes.append(f"{entry.bdf}: the interrupted {what} ({started}) is moot: it is gone")
            continue
        if entry.direction is direction and address in targets:
            done = ", ".join(entry.steps_done) or "no step"
            notes.append(f"{entry.bdf}: finishing the interrupted {what} ({started}; done: {done})")
            log.warning("recovery", bdf=entry.bdf, step="journal", outcome="finishing")
            finishing.add(address)
            continue
        label, problem = engine.restore(
            address,
            start_driver=entry.original_driver,
            start_override=entry.original_override,
        )
        if problem is None:
            journal.abort(entry.bdf)
            notes.append(f"{entry.bdf}: rolled back the interrupted {what} ({started}) to {label}")
            log.warning("recovery", bdf=entry.bdf, step="journal", outcome="rolled back")
        else:
            notes.append(f"{entry.bdf}: could not roll back the interrupted {what}: {problem}")
            log.error("recovery", bdf=entry.bdf, step="journal", outcome="failed", reason=problem)
    return Recovery(tuple(notes), engine.kernel.sysfs.writes != before, frozenset(finishing))

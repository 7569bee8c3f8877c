"""What the journal asks this run to finish or undo, as ordinary plan input.

A run killed half way leaves a transition record per function it had started (see
:mod:`vfio_manager.safety.journal`). Settling one is a write like any other, so it goes
through the same plan, refusals, engine and report as the run's own functions: it is shown
by ``--dry-run``, refused when a process holds the function or the record falls outside the
selection, counted in the summary, and a failure to settle makes the exit code 1.

The policy, per record (checked against the live function first):

* the function is gone, or another device (vendor:device) now sits at its address: the
  record is moot and dropped, said in a note, and the function is planned like any other;
* its recorded driver is not a registered PCI driver, was recorded as unknown (the driver
  link named no usable driver), or the function is not selected: refused, and the record
  stays for a human (or a run with the right selection);
* the record goes the way this run goes: the function is *finished*, i.e. planned like a
  target of this run (added to the targets if it was not one);
* otherwise it is *rolled back* to the driver and override it had before the killed run,
  which, for a target of this run, is where this run takes it anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Optional

from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import Direction, is_vfio_driver
from vfio_manager.kernel.model import PciFunction, Topology
from vfio_manager.pipeline.plan import (
    FunctionPlan,
    Interrupted,
    RefusalKind,
    Settle,
    restore_steps,
)
from vfio_manager.pipeline.selection import Selector
from vfio_manager.safety.journal import JournalEntry

_VERB = {Direction.TO_VFIO: "bind to vfio", Direction.TO_HOST: "return to the host"}


@dataclass
class Settlement:
    """The journal's share of a plan.

    ``interrupted`` is attached to the entries of targets (existing or ``extra_targets``);
    ``entries`` are roll-backs of functions that are not targets, and refusals (which
    replace a target's own entry: its record must be settled first). ``moot`` are
    records of functions that are gone (dropped by a real run), ``notes`` say what was found.
    """

    interrupted: dict[PciAddress, Interrupted] = field(default_factory=dict)
    extra_targets: list[PciFunction] = field(default_factory=list)
    entries: list[FunctionPlan] = field(default_factory=list)
    moot: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _started(entry: JournalEntry) -> str:
    return f"started {entry.started_at or 'at an unknown time'} by PID {entry.pid or '?'}"


def _another_device(entry: JournalEntry, function: PciFunction) -> Optional[str]:
    present = f"{function.vendor:04x}:{function.device:04x}"
    if entry.vendor_device is not None and entry.vendor_device != present:
        return f"it was written for {entry.vendor_device}, but {present} is at that address now"
    return None


def _misfit(entry: JournalEntry, topology: Topology) -> Optional[str]:
    """Why the record cannot be applied to the function now at its address, if it cannot."""
    if entry.original_driver_unknown:
        return (
            "the driver it had before was not a usable name, so it was recorded as unknown "
            "and cannot be restored"
        )
    driver = entry.original_driver
    if driver is not None and not is_vfio_driver(driver) and driver not in topology.driver_modules:
        return f"its recorded driver {driver!r} is not a registered PCI driver"
    return None


def settle(
    pending: Collection[JournalEntry],
    topology: Topology,
    *,
    selector: Selector,
    direction: Direction,
    targets: Collection[PciAddress],
    probe_picks: Callable[[PciFunction, Optional[str]], bool] = lambda _f, _d: True,
) -> Settlement:
    """Turn the pending journal records into plan input; see the module docstring.

    ``probe_picks(function, driver)`` says whether ``drivers_probe`` is trusted to attach
    the recorded driver of a roll-back (see :func:`~vfio_manager.pipeline.plan.host_steps`).
    """
    result = Settlement()
    for entry in pending:
        if entry.corrupt or entry.bdf is None or entry.direction is None:
            result.notes.append(
                f"a journal record{' for ' + entry.bdf if entry.bdf else ''} was unreadable "
                f"({entry.problem}); "
                + (f"set aside as {entry.quarantined_as}" if entry.quarantined_as else "ignored")
                + "; the interrupted run it described is not settled: "
                + (f"{entry.bdf} is" if entry.bdf else "its function, if any, is")
                + " planned from what sysfs shows now"
            )
            continue
        address = PciAddress.parse(entry.bdf)
        what = f"the interrupted {_VERB[entry.direction]} ({_started(entry)})"
        function = topology.functions.get(address)
        gone = "the function is gone" if function is None else _another_device(entry, function)
        if function is None or gone is not None:
            result.moot.append(entry.bdf)
            result.notes.append(f"{entry.bdf}: {what} is moot ({gone}); record dropped")
            continue
        misfit = _misfit(entry, topology)
        if misfit is None and not selector.matches(function):
            misfit = f"the function is outside the selection ({selector.describe()})"
        if misfit is not None:
            result.entries.append(
                FunctionPlan(
                    function,
                    entry.direction,
                    refusal=f"a journal record asks to settle {what}, but {misfit}",
                    remedy="run with a selection that includes it if the record is right; "
                    "otherwise move it out of the state directory (it is kept for you)",
                    refusal_kind=RefusalKind.JOURNAL,
                )
            )
            continue
        if entry.direction is direction:
            interrupted = Interrupted(
                Settle.FINISH,
                f"finishing {what}",
                entry.original_driver,
                entry.original_override,
            )
            result.interrupted[address] = interrupted
            if address not in targets:
                result.extra_targets.append(function)
            continue
        interrupted = Interrupted(
            Settle.ROLL_BACK,
            f"rolling back {what}",
            entry.original_driver,
            entry.original_override,
        )
        if address in targets:
            result.interrupted[address] = interrupted
            continue
        result.entries.append(
            FunctionPlan(
                function,
                Direction.TO_HOST if entry.direction is Direction.TO_VFIO else Direction.TO_VFIO,
                steps=restore_steps(
                    function,
                    entry.original_driver,
                    entry.original_override,
                    probe_picks=probe_picks(function, entry.original_driver),
                ),
                target_driver=entry.original_driver,
                target_override=entry.original_override,
                interrupted=interrupted,
            )
        )
    return result


__all__ = ["Settlement", "settle"]

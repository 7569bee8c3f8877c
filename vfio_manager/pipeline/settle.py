"""What the journal asks this run to finish or undo, as ordinary plan input.

Per record a killed run left: a function gone (or another device there) makes it moot; a
recorded driver unknown or not registered, or a function not selected, is refused; a record
going this run's way is *finished*, any other *rolled back* to the state before it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Optional

from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import Direction, is_vfio_driver
from vfio_manager.kernel.model import PciFunction, Topology
from vfio_manager.pipeline.plan import FunctionPlan, Interrupted, RefusalKind, Settle, restore_steps
from vfio_manager.pipeline.selection import Selector
from vfio_manager.safety.journal import JournalEntry

_VERB = {Direction.TO_VFIO: "bind to vfio", Direction.TO_HOST: "return to the host"}


@dataclass
class Settlement:
    """The journal's share of a plan: ``interrupted`` for targets' entries (with
    ``extra_targets``), ``entries`` (roll-backs and refusals), ``moot`` records."""

    interrupted: dict[PciAddress, Interrupted] = field(default_factory=dict)
    extra_targets: list[PciFunction] = field(default_factory=list)
    entries: list[FunctionPlan] = field(default_factory=list)
    moot: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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
    """Turn the pending journal records into plan input. ``probe_picks(function, driver)``:
    whether ``drivers_probe`` is trusted to attach a roll-back's recorded driver."""
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
        started = f"started {entry.started_at or 'at an unknown time'} by PID {entry.pid or '?'}"
        what = f"the interrupted {_VERB[entry.direction]} ({started})"
        function = topology.functions.get(address)
        present = f"{function.vendor:04x}:{function.device:04x}" if function else None
        if function is None or entry.vendor_device not in (None, present):
            gone = (
                "the function is gone"
                if function is None
                else f"it was written for {entry.vendor_device}, but {present} is at that "
                "address now"
            )
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
        finish = entry.direction is direction
        driver, override = entry.original_driver, entry.original_override
        interrupted = Interrupted(
            Settle.FINISH if finish else Settle.ROLL_BACK,
            f"finishing {what}" if finish else f"rolling back {what}",
            driver,
            override,
        )
        if finish or address in targets:
            result.interrupted[address] = interrupted
            if address not in targets:
                result.extra_targets.append(function)
            continue
        steps = restore_steps(function, driver, override, probe_picks=probe_picks(function, driver))
        back = Direction.TO_HOST if entry.direction is Direction.TO_VFIO else Direction.TO_VFIO
        plan = FunctionPlan(function, back, steps, target_driver=driver, target_override=override)
        result.entries.append(replace(plan, interrupted=interrupted))
    return result

"""Refuse what must not be moved: functions held by a process, or backing the host itself.

Runs on every entry of the plan, journal roll-backs included, with one /proc scan and one
read of the host's tables for all of them. ``--force`` turns the refusals into warnings.
"""

from __future__ import annotations

from dataclasses import replace

from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import Direction, is_vfio_driver
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.log import get_logger
from vfio_manager.pipeline.plan import Action, FunctionPlan, Plan, RefusalKind, refuse_group_mates

log = get_logger("vfio_manager.pipeline.refusals")

_FORCE = "pass --force to move it anyway"


def _unbinds(entry: FunctionPlan) -> bool:
    return any(step.action is Action.UNBIND for step in entry.steps)


def protect(plan: Plan, sysfs: Sysfs, *, proc_root: str, force: bool = False) -> Plan:
    """Return ``plan`` with held or host-critical functions refused (unless ``force``)."""
    reasons: dict[PciAddress, tuple[str, str, RefusalKind]] = {}
    moving = [e for e in plan.entries if e.refusal is None and e.steps]
    to_vfio = [e for e in moving if e.direction is Direction.TO_VFIO]
    if to_vfio:
        from vfio_manager.safety.hostcritical import HostCritical

        guard = HostCritical(sysfs, proc_root=proc_root)
        for entry in to_vfio:
            if entry.function.driver is not None and not is_vfio_driver(entry.function.driver):
                found = guard.reasons(entry.address)
                if found:
                    reasons[entry.address] = (
                        "the host needs it: " + "; ".join(found),
                        f"move the host's disk, network or console elsewhere first, or {_FORCE}",
                        RefusalKind.HOST_CRITICAL,
                    )
    unbinding = [e.function for e in moving if _unbinds(e) and e.address not in reasons]
    from vfio_manager.safety.holders import describe_holders, find_holders

    for address, holders in find_holders(sysfs, proc_root, unbinding).items():
        reasons[address] = (
            "it is in use: " + describe_holders(holders),
            f"stop those processes (a VM: shut it down or detach the device), or {_FORCE} "
            "(the unbind then waits for them, up to --timeout)",
            RefusalKind.IN_USE,
        )
    if not reasons:
        return plan
    if force:
        for address, (reason, _remedy, _kind) in reasons.items():
            log.warning("forced", bdf=str(address), step="protect", outcome="forced", reason=reason)
        return plan
    entries = [
        replace(
            e,
            steps=(),
            refusal=reasons[e.address][0],
            remedy=reasons[e.address][1],
            refusal_kind=reasons[e.address][2],
        )
        if e.address in reasons
        else e
        for e in plan.entries
    ]
    if plan.direction is Direction.TO_VFIO:
        entries = refuse_group_mates(entries, set(reasons))
    return Plan(plan.direction, tuple(entries))

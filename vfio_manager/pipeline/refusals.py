"""Refuse what must not be moved: functions held by a process, or backing the host itself.

Runs between planning and applying, on every entry of the plan, journal roll-backs
included. One /proc scan covers every function that would be
unbound, and one read of the host's mount, block and network tables covers every function the
guard checks. ``--force`` turns the refusals into warnings; nothing else bypasses them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import Direction, is_vfio_driver
from vfio_manager.kernel.model import PciFunction
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.log import get_logger
from vfio_manager.pipeline.plan import (
    Action,
    FunctionPlan,
    Plan,
    RefusalKind,
    refuse_group_mates,
)

if TYPE_CHECKING:  # imported where used: a converged plan neither scans nor guards
    from vfio_manager.safety.holders import Holder, Target

log = get_logger("vfio_manager.pipeline.refusals")

_FORCE = "pass --force to move it anyway"


def _unbinds(entry: FunctionPlan) -> bool:
    return any(step.action is Action.UNBIND for step in entry.steps)


def holder_targets(sysfs: Sysfs, function: PciFunction) -> list[Target]:
    """What a process can hold the function through: its vfio group node when it is in vfio
    mode, the native driver's device nodes and its BAR files otherwise."""
    from vfio_manager.safety.holders import function_targets

    group = function.iommu_group if is_vfio_driver(function.driver) else None
    return function_targets(sysfs, function.address, group=group)


def find_holders(
    sysfs: Sysfs, proc_root: str, functions: list[PciFunction]
) -> dict[PciAddress, list[Holder]]:
    """Holders per function, from one scan of /proc."""
    if not functions:
        return {}
    from vfio_manager.safety.holders import scan_holders

    owner: dict[str, PciAddress] = {}
    targets: list[Target] = []
    for function in functions:
        for target in holder_targets(sysfs, function):
            owner.setdefault(target.path, function.address)
            targets.append(target)
    scan = scan_holders(proc_root, targets)
    if not scan.complete:
        log.warning(
            "in-use scan incomplete",
            step="in-use",
            outcome="partial",
            unreadable_pids=list(scan.unreadable)[:20],
            hint="run as root with the host's PID namespace (hostPID: true in Kubernetes)",
        )
    found: dict[PciAddress, list[Holder]] = {}
    for holder in scan.holders:
        address = owner.get(holder.what)
        if address is not None:
            found.setdefault(address, []).append(holder)
    return found


def protect(plan: Plan, sysfs: Sysfs, *, proc_root: str, force: bool = False) -> Plan:
    """Return ``plan`` with held or host-critical functions refused (unless ``force``)."""
    reasons: dict[PciAddress, tuple[str, str, RefusalKind]] = {}
    moving = [e for e in plan.entries if e.refusal is None and e.steps]
    to_vfio = [e for e in moving if e.direction is Direction.TO_VFIO]
    if to_vfio:
        from vfio_manager.safety.hostcritical import SafetyGuard

        guard = SafetyGuard(sysfs, proc_root=proc_root)
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
    for address, holders in find_holders(sysfs, proc_root, unbinding).items():
        from vfio_manager.safety.holders import describe_holders

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

"""``--on-exit keep|release-idle|release``: what the daemon does with the functions as it stops.

Why ``keep`` is the default: a rolling update of the DaemonSet (or a restart of the unit)
stops the daemon while VMs run; a device yanked from a running VM is a crashed VM. The
functions stay on vfio-pci and the next daemon finds them converged.

``release-idle`` returns to the host only the functions whose IOMMU group no process holds
(no VM has its ``/dev/vfio/N`` open), found by one /proc scan under the node lock and then
left out of the run, so a held group is simply kept, not an error. ``release`` returns every
selected function with exactly ``unbind-all``'s refusals: one a process holds is refused and
the exit code is 1. Both go through the one write pipeline (lock, journal, refusals) and
never touch a function named with ``--exclude``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

from vfio_manager.daemon.reconciler import addresses
from vfio_manager.errors import ExitCode, VfioManagerError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import Direction, is_vfio_driver
from vfio_manager.kernel.inventory import read_topology
from vfio_manager.log import get_logger
from vfio_manager.pipeline.node import Node
from vfio_manager.pipeline.selection import Selector, selected_functions
from vfio_manager.pipeline.transition import TransitionRequest, TransitionResult, run_transition

log = get_logger("vfio_manager.daemon.onexit")


class OnExit(str, enum.Enum):
    KEEP = "keep"
    RELEASE_IDLE = "release-idle"
    RELEASE = "release"


class OnExitError(VfioManagerError):
    """Some functions could not be returned to the host on exit (refused or failed)."""

    exit_code = ExitCode.FAILED


def on_exit_action(
    mode: OnExit, node: Node, selector: Selector, *, exclude: Iterable[str] = ()
) -> Callable[[], None]:
    """The loop's ``on_exit`` for ``mode``."""
    excluded = addresses(exclude)

    def keep() -> None:
        log.info("on exit: functions kept where they are (--on-exit keep)")

    def release() -> None:
        request = TransitionRequest(selector, Direction.TO_HOST, exclude=excluded)
        result = run_transition(node, request)
        _check(result, "release")

    def release_idle() -> None:
        with node.lock() as lock:
            held = held_group_members(node, selector)
            if held:
                log.info(
                    "on exit: kept on vfio, their group is in use",
                    bdfs=sorted(str(a) for a in held),
                )
            request = TransitionRequest(selector, Direction.TO_HOST, exclude=excluded | held)
            result = run_transition(node, request, lock=lock)
        _check(result, "release-idle")

    return {OnExit.KEEP: keep, OnExit.RELEASE: release, OnExit.RELEASE_IDLE: release_idle}[mode]


def held_group_members(node: Node, selector: Selector) -> frozenset[PciAddress]:
    """Every member of each IOMMU group that a process holds through a selected function on
    vfio. Read-only; call it under the node lock when acting on the answer."""
    from vfio_manager.safety.holders import find_holders

    sysfs = node.sysfs()
    topology = read_topology(sysfs)
    in_vfio = [f for f in selected_functions(topology, selector) if is_vfio_driver(f.driver)]
    found = find_holders(sysfs, node.proc_root, in_vfio)
    held: set[PciAddress] = set()
    for address, holders in found.items():
        function = topology.get(address)
        if holders and function is not None:
            held.update(m.address for m in topology.group_members(function))
    return frozenset(held)


def _check(result: TransitionResult, mode: str) -> None:
    report = result.report
    moved = report.outcomes if report is not None else ()
    for outcome in moved:
        log.info(
            "on exit",
            mode=mode,
            bdf=outcome.bdf,
            outcome=outcome.status.value,
            driver=outcome.driver,
            reason=outcome.reason,
        )
    if result.exit_code == ExitCode.OK:
        return
    bad = [o for o in moved if o.status.value in ("refused", "failed") or o.journal_error]
    names = ", ".join(f"{o.bdf} {o.status.value}: {o.reason}" for o in bad) or "see the log"
    raise OnExitError(
        f"--on-exit {mode}: not every function went back to the host ({names})",
        remedy="stop what holds them (a VM), then run `vfio-manager unbind-all`",
    )


__all__ = ["OnExit", "OnExitError", "held_group_members", "on_exit_action"]

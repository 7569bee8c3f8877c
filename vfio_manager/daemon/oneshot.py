"""What the one-shot commands do about a daemon: record the admin's intents, clear them.

Why here and not in the pipeline: intents are the daemon's business (the pipeline does not
know a daemon exists), but they must be written by the commands the admin runs.
``unbind``/``unbind-all`` run while a daemon is up record an intent per function they are
about to return to the host, *before* they take the node lock, so whichever of the two runs
first, the daemon never moves the function back (:mod:`.intent`). An intent is dropped again
for a function the run did not return (it was refused, failed back to vfio, or the run never
started): there is nothing to protect, and the daemon keeps managing it. ``bind``/``bind-all``
clear the intents of the functions that end on vfio, whether or not a daemon is up: an intent
left behind would otherwise surprise the next daemon.
"""

from __future__ import annotations

from typing import Optional

from vfio_manager.daemon.intent import IntentStore
from vfio_manager.daemon.presence import daemon_running
from vfio_manager.errors import VfioManagerError
from vfio_manager.kernel.drivers import Direction, is_vfio_driver
from vfio_manager.kernel.inventory import read_topology
from vfio_manager.log import get_logger
from vfio_manager.pipeline.node import Node
from vfio_manager.pipeline.selection import named_functions, selected_functions
from vfio_manager.pipeline.transition import TransitionRequest, TransitionResult

log = get_logger("vfio_manager.daemon.oneshot")


def record_unbind_intents(node: Node, request: TransitionRequest) -> tuple[str, ...]:
    """Before a real return to the host while a daemon is up: one intent per target.

    Named BDFs are checked the way the run checks them (a typo is refused before any intent
    is written). Returns the BDFs recorded.
    """
    if request.direction is not Direction.TO_HOST or request.dry_run:
        return ()
    if not daemon_running(node.state_dir):
        return ()
    topology = read_topology(node.sysfs())
    if request.named:
        targets = named_functions(topology, request.selector, request.named)
    else:
        targets = selected_functions(topology, request.selector)
    store = IntentStore(node.state_dir)
    return tuple(store.record(f.bdf).bdf for f in targets)


def settle_intents(
    node: Node, result: Optional[TransitionResult], recorded: tuple[str, ...]
) -> tuple[str, ...]:
    """After a run: clear what no longer holds. ``result`` is ``None`` when the run raised.

    Returns the BDFs whose intent was cleared. A state directory that refuses is logged,
    not raised: the run itself is over and its report must still be printed.
    """
    try:
        return _settle(node, result, recorded)
    except VfioManagerError as err:
        log.error("intents not updated", error=err.message, remedy=err.remedy)
        return ()


def _settle(
    node: Node, result: Optional[TransitionResult], recorded: tuple[str, ...]
) -> tuple[str, ...]:
    store = IntentStore(node.state_dir)
    if result is None or result.report is None:
        return tuple(store.clear(recorded)) if recorded else ()
    request = result.request
    if request.dry_run:
        return ()
    from vfio_manager.pipeline.engine import Status

    outcomes = result.report.outcomes
    if request.direction is Direction.TO_VFIO:
        on_vfio = [
            o.bdf
            for o in outcomes
            if o.status in (Status.CHANGED, Status.CONVERGED) and is_vfio_driver(o.driver)
        ]
        return tuple(store.clear(on_vfio))
    not_returned = [o.bdf for o in outcomes if o.bdf in recorded and is_vfio_driver(o.driver)]
    return tuple(store.clear(not_returned)) if not_returned else ()


__all__ = ["record_unbind_intents", "settle_intents"]

"""The daemon's reconciler: one pass of the write pipeline per call, told in daemon states.

Why over :func:`~vfio_manager.pipeline.transition.run_transition` and nothing else: the daemon
must not be a second way to write. Every reconcile is a ``bind-all`` restricted to what the
loop asks for, so it takes the same node lock, runs the same preflight gate (loading missing
modules unless told not to), settles the same journal, meets the same refusals (a function a
process holds, one the host needs, a group that cannot be handed over) and writes through
the same engine. What the daemon adds is *what it leaves out* and *how it reports*:

- left out (:attr:`TransitionRequest.exclude`, so the pipeline never plans them, not even to
  settle a journal record): functions named with ``--exclude``, those the admin asked to
  leave on the host (the intents, read under the lock: an ``unbind`` that records its intent
  and runs between our read and our writes would otherwise be undone), and those still
  waiting for their retry after a failure (``request.skip``);
- scope: a partial reconcile re-plans the selected members of the IOMMU groups of the BDFs a
  uevent named (:attr:`TransitionRequest.scope`), because a peer's driver decides whether a
  group can be handed over;
- the report becomes :class:`~vfio_manager.daemon.state.FunctionStatus` values: changed or
  converged -> ``converged``; refused because a process holds it or the host needs it ->
  ``held``; refused because its group cannot be handed over (or the kernel would refuse it)
  -> ``pending`` with the reason; failed -> ``failed`` with the kernel's reason; a function
  that vanished during its transition is left out (it is gone).

The preflight gate's refusal is not an exception here: the host is reported not ready, with
each failing check and its remedy, and every function not on vfio is ``pending``. With no
function to move (none selected, or all excluded), the gate does not run and the host counts
as ready: a node without NPUs must become ready. A partial reconcile that had nothing to move
keeps the last verdict, so an unrelated uevent never makes a host that is not ready look
ready.

The node lock is taken for the call only, so one-shot commands run beside the daemon; while
another run holds it, a stop request (SIGTERM) ends the wait at the next poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Optional

from vfio_manager.daemon.state import (
    HOST_READY,
    FunctionStatus,
    HostCheck,
    HostReadiness,
    ReconcileOutcome,
    ReconcileRequest,
    State,
    TransitionOutcome,
    TransitionRecord,
)
from vfio_manager.errors import VfioManagerError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import Direction, is_vfio_driver
from vfio_manager.kernel.inventory import read_topology
from vfio_manager.kernel.model import PciFunction, Topology
from vfio_manager.log import get_logger
from vfio_manager.pipeline.node import Node
from vfio_manager.pipeline.plan import FunctionPlan, RefusalKind
from vfio_manager.pipeline.selection import Selector, in_groups_of, selected_functions
from vfio_manager.pipeline.transition import TransitionRequest, TransitionResult, run_transition
from vfio_manager.safety.intents import Intent, IntentStore

if TYPE_CHECKING:
    from vfio_manager.host.modules import Runner
    from vfio_manager.host.preflight import PreflightFailed
    from vfio_manager.pipeline.engine import Outcome

log = get_logger("vfio_manager.daemon.reconciler")

_HELD_KINDS = frozenset({RefusalKind.IN_USE, RefusalKind.HOST_CRITICAL})
_OUTCOMES = {
    "changed": TransitionOutcome.CHANGED,
    "failed": TransitionOutcome.FAILED,
    "refused": TransitionOutcome.REFUSED,
}


class StopRequested(VfioManagerError):
    """A stop arrived while the reconciler waited for the node lock: it gave up waiting."""


def interruptible_sleep(
    stop_requested: Callable[[], bool], sleep: Callable[[float], None] = time.sleep
) -> Callable[[float], None]:
    """A ``sleep`` for the lock's polling loop that raises once a stop was requested."""

    def wait(seconds: float) -> None:
        if stop_requested():
            raise StopRequested(
                "stopping: gave up waiting for the node lock (another vfio-manager run holds it)"
            )
        sleep(seconds)

    return wait


def addresses(bdfs: Iterable[str]) -> frozenset[PciAddress]:
    """Canonical BDF strings as addresses; anything that is not a BDF is dropped."""
    found = (PciAddress.from_sysfs_name(b) for b in bdfs)
    return frozenset(a for a in found if a is not None)


class PipelineReconciler:
    """``Callable[[ReconcileRequest], ReconcileOutcome]`` over the write pipeline.

    ``exclude``: canonical BDFs never touched (``--exclude``). ``runner``: the modprobe runner
    (tests pass the fake kernel's). Stateful only in the host verdict it remembers between
    calls (see the module docstring).
    """

    def __init__(
        self,
        node: Node,
        selector: Selector,
        *,
        exclude: Iterable[str] = (),
        load_modules: bool = True,
        runner: Optional[Runner] = None,
        intents: Optional[IntentStore] = None,
    ) -> None:
        self.node = node
        self.selector = selector
        self.exclude = frozenset(str(a) for a in addresses(exclude))
        self.load_modules = load_modules
        self.runner = runner
        self.intents = intents if intents is not None else IntentStore(node.state_dir)
        self.host: HostReadiness = HOST_READY

    def __call__(self, request: ReconcileRequest) -> ReconcileOutcome:
        with self.node.lock(sleep=interruptible_sleep(request.stop_requested)) as lock:
            intents = self.intents.read()
            scope = None if request.affected is None else addresses(request.affected)
            transition = TransitionRequest(
                self.selector,
                Direction.TO_VFIO,
                load_modules=self.load_modules,
                runner=self.runner,
                exclude=addresses(self.exclude | intents.keys() | request.skip),
                scope=scope,
            )
            from vfio_manager.host.preflight import PreflightFailed

            try:
                result = run_transition(self.node, transition, lock=lock)
            except PreflightFailed as failed:
                topology = read_topology(self.node.sysfs())
                return self._not_ready(failed, topology, scope, intents)
        for note in result.notes:
            log.info("reconcile note", note=note)
        return self._outcome(request, result, scope, intents)

    # -- mapping -------------------------------------------------------------------------
    def _in_scope(
        self, topology: Topology, scope: Optional[frozenset[PciAddress]]
    ) -> list[PciFunction]:
        functions = selected_functions(topology, self.selector)
        if scope is None:
            return functions
        members = in_groups_of(topology, scope)
        return [f for f in functions if f.address in members]

    def _left_out(
        self, function: PciFunction, intents: Mapping[str, Intent], skip: frozenset[str]
    ) -> Optional[FunctionStatus]:
        """The status of a function the run was told to leave alone, else ``None``."""
        bdf = function.bdf
        if bdf in self.exclude:
            return FunctionStatus(
                bdf, State.EXCLUDED, "excluded with --exclude", "remove --exclude to manage it"
            )
        intent = intents.get(bdf)
        if intent is not None:
            return FunctionStatus(
                bdf,
                State.INTENT_HOST,
                intent.describe(),
                f"`vfio-manager bind {bdf}` hands it back to the daemon",
            )
        if bdf in skip:
            return _as_found(function, "waiting for its retry after a failure")
        return None

    def _outcome(
        self,
        request: ReconcileRequest,
        result: TransitionResult,
        scope: Optional[frozenset[PciAddress]],
        intents: Mapping[str, Intent],
    ) -> ReconcileOutcome:
        topology = result.topology
        if topology is None:  # only a dry run has none; the daemon never asks for one
            raise RuntimeError("the pipeline returned no topology")
        entries = {e.function.bdf: e for e in result.plan.entries}
        outcomes = {o.bdf: o for o in result.report.outcomes} if result.report is not None else {}
        statuses: dict[str, FunctionStatus] = {}
        moved = False
        for function in self._in_scope(topology, scope):
            left_out = self._left_out(function, intents, request.skip)
            if left_out is not None:
                statuses[function.bdf] = left_out
                continue
            moved = True
            status = self._planned(function, entries.get(function.bdf), outcomes)
            if status is not None:
                statuses[function.bdf] = status
        transitions: list[TransitionRecord] = []
        for entry in result.plan.entries:  # journal settlements outside the scope included
            function = entry.function
            if not self.selector.matches(function):
                continue  # a journal record the run refused to settle; the engine logged it
            if function.bdf not in statuses:
                status = self._planned(function, entry, outcomes)
                if status is not None:
                    statuses[function.bdf] = status
            record = _record(entry, outcomes.get(function.bdf))
            if record is not None:
                transitions.append(record)
        if moved:
            self.host = HOST_READY  # the gate ran and passed
        elif scope is None:
            self.host = HOST_READY  # nothing to move: the host's readiness does not matter
        return ReconcileOutcome(
            tuple(statuses[b] for b in sorted(statuses)), self.host, tuple(transitions)
        )

    def _planned(
        self,
        function: PciFunction,
        entry: Optional[FunctionPlan],
        outcomes: Mapping[str, Outcome],
    ) -> Optional[FunctionStatus]:
        """The state of a function the run planned; ``None`` when it vanished meanwhile."""
        from vfio_manager.pipeline.engine import Status

        outcome = outcomes.get(function.bdf)
        if entry is None or outcome is None:  # nothing planned or applied: as it was found
            return _as_found(function, "not planned")
        if outcome.journal_error is not None:
            return FunctionStatus(
                function.bdf,
                State.FAILED,
                f"the journal was not updated: {outcome.journal_error}",
                "the state directory must be writable and not full",
            )
        if outcome.status in (Status.CHANGED, Status.CONVERGED):
            return FunctionStatus(function.bdf, State.CONVERGED)
        if outcome.status is Status.REFUSED:
            held = entry.refusal_kind in _HELD_KINDS
            state = State.HELD if held else State.PENDING
            return FunctionStatus(function.bdf, state, outcome.reason, outcome.remedy)
        if not self.node.sysfs().function_exists(function.address):
            return None  # gone: its remove uevent drops it from the view
        reason = outcome.reason or "failed"
        if outcome.restored_to:
            reason += f" (restored to {outcome.restored_to})"
        return FunctionStatus(function.bdf, State.FAILED, reason, outcome.remedy)

    def _not_ready(
        self,
        failed: PreflightFailed,
        topology: Topology,
        scope: Optional[frozenset[PciAddress]],
        intents: Mapping[str, Intent],
    ) -> ReconcileOutcome:
        checks = tuple(HostCheck(c.name, c.detail, c.remedy) for c in failed.failing)
        self.host = HostReadiness(ok=False, failing=checks)
        names = ", ".join(c.name for c in checks)
        statuses = []
        for function in self._in_scope(topology, scope):
            left_out = self._left_out(function, intents, frozenset())
            statuses.append(
                left_out
                if left_out is not None
                else _as_found(
                    function,
                    f"the host is not ready ({names}): nothing is written until it is",
                    "fix the failing host checks (see /readyz or `vfio-manager check`)",
                )
            )
        return ReconcileOutcome(tuple(statuses), self.host)


def _as_found(function: PciFunction, reason: str, remedy: Optional[str] = None) -> FunctionStatus:
    """Converged when it is on a vfio driver already, else pending for ``reason``."""
    if is_vfio_driver(function.driver):
        return FunctionStatus(function.bdf, State.CONVERGED)
    return FunctionStatus(function.bdf, State.PENDING, reason, remedy)


def _record(entry: FunctionPlan, outcome: Optional[Outcome]) -> Optional[TransitionRecord]:
    """The transition an outcome stands for; ``None`` for a converged function."""
    if outcome is None:
        return None
    kind = _OUTCOMES.get(outcome.status.value)
    if kind is None:
        return None
    return TransitionRecord(outcome.bdf, entry.direction, kind, outcome.reason)


__all__ = ["PipelineReconciler", "StopRequested", "addresses", "interruptible_sleep"]

"""The daemon's reconciler: one run of the write pipeline per call, told as per-function states;
and ``--on-exit``, through the same pipeline. docs/daemon.md has the state model."""

from __future__ import annotations

import calendar
import enum
import errno as errno_mod
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Optional

from vfio_manager.errors import ExitCode, VfioManagerError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import Direction, is_vfio_driver
from vfio_manager.kernel.inventory import read_topology
from vfio_manager.kernel.model import PciFunction, Topology
from vfio_manager.log import get_logger
from vfio_manager.pipeline.engine import Outcome, Result
from vfio_manager.pipeline.node import Node
from vfio_manager.pipeline.plan import FunctionPlan, RefusalKind
from vfio_manager.pipeline.selection import (
    Selector,
    in_groups_of,
    product_label,
    selected_functions,
)
from vfio_manager.pipeline.transition import TransitionRequest, TransitionResult, run_transition
from vfio_manager.safety.intents import Intent, IntentStore

if TYPE_CHECKING:
    from vfio_manager.safety.lock import NodeLock

log = get_logger("vfio_manager.daemon.reconciler")

Scope = Optional[frozenset[PciAddress]]  # the affected functions' addresses; None: all
Intents = Mapping[str, Intent]


class State(str, enum.Enum):
    """A selected function as the daemon sees it; the settled ones keep the node ready."""

    CONVERGED = "converged"
    PENDING = "pending"
    HELD = "held"
    EXCLUDED = "excluded"
    FAILED = "failed"
    INTENT_HOST = "intent-host"

    @property
    def accepted(self) -> bool:
        return self in (State.CONVERGED, State.EXCLUDED, State.INTENT_HOST)


class Reason(str, enum.Enum):
    """Why a function is in its state, bounded: a metric label and what ``/readyz`` says. The
    detail (which may name other workloads' processes) is for the log and ``status``."""

    NONE = "none"
    IN_USE = "in-use"
    HOST_CRITICAL = "host-critical"
    GROUP = "group"
    KERNEL = "kernel"
    JOURNAL = "journal"
    HOST_NOT_READY = "host-not-ready"
    BACKOFF = "backoff"
    FLAPPING = "flapping"
    EXCLUDED = "excluded"
    INTENT = "intent"
    TRANSITION_FAILED = "transition-failed"
    STUCK_WRITE = "stuck-write"
    NOT_RESPONDING = "not-responding"  # the device or its driver did not answer (EIO, ENODEV)
    LEFT_SELECTION = "left-selection"


@dataclass(frozen=True)
class FunctionState:
    """One function's state; ``reason`` (detail) and ``remedy`` say why it is not converged,
    ``cause`` the bounded kind of that reason."""

    bdf: str
    state: State
    reason: Optional[str] = None
    remedy: Optional[str] = None
    cause: Reason = Reason.NONE
    product: str = ""  # product_label: a label value

    def to_json(self) -> dict[str, Any]:
        """For ``/readyz``: the bounded reason only."""
        return {
            "bdf": self.bdf,
            "state": self.state.value,
            "reason": self.cause.value,
            "remedy": self.remedy,
        }


@dataclass(frozen=True)
class HostCheck:
    """A failing host readiness check, by its ``vfio-manager check`` name."""

    name: str
    detail: str
    remedy: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HostReadiness:
    ok: bool
    failing: tuple[HostCheck, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"ready": self.ok, "failing": [c.to_json() for c in self.failing]}


HOST_READY = HostReadiness(ok=True)
LEFT = Reason.LEFT_SELECTION


@dataclass(frozen=True)
class LastTransition:
    """One attempted transition: its ``result`` is changed, failed or refused."""

    bdf: str
    direction: Direction
    result: Result
    reason: Optional[str] = None


@dataclass(frozen=True)
class ReconcileRequest:
    """``affected``: BDFs to re-plan with their groups, ``None`` for all; ``skip``: functions
    waiting for a retry, read but never written; ``stop_requested`` ends a wait for the lock."""

    affected: Optional[frozenset[str]]
    skip: frozenset[str] = frozenset()
    stop_requested: Callable[[], bool] = field(default=lambda: False, compare=False, repr=False)


@dataclass(frozen=True)
class ReconcileOutcome:
    """Every function looked at (an affected BDF missing is gone), host verdict, transitions;
    ``journal``: the pending journal records, each (BDF, Unix time it started, if known)."""

    functions: tuple[FunctionState, ...]
    host: HostReadiness = HOST_READY
    transitions: tuple[LastTransition, ...] = ()
    journal: tuple[tuple[str, Optional[float]], ...] = ()


@dataclass(frozen=True)
class NodeView:
    """The node after the last reconcile; ``error``: that reconcile raised."""

    functions: Mapping[str, FunctionState] = field(default_factory=dict)
    host: HostReadiness = HOST_READY
    reconciled: bool = False
    error: Optional[str] = None

    @property
    def converged(self) -> bool:
        settled = all(s.state.accepted for s in self.functions.values())
        return self.reconciled and self.error is None and self.host.ok and settled

    def serving(self, alive: bool) -> bool:
        """``/readyz``: the agent works (``alive``, reconciled) and the host can do VFIO."""
        return alive and self.reconciled and self.host.ok

    def counts(self) -> dict[str, int]:
        """``{state: count}`` with every state, in declaration order."""
        return {s.value: sum(f.state is s for f in self.functions.values()) for s in State}

    def merge(self, request: ReconcileRequest, outcome: ReconcileOutcome) -> NodeView:
        """A full resync replaces the view, a partial one patches it."""
        patched = request.affected
        kept = {b: s for b, s in self.functions.items() if patched is not None and b not in patched}
        return NodeView(kept | {s.bdf: s for s in outcome.functions}, outcome.host, reconciled=True)

    def to_json(self, alive: bool) -> dict[str, Any]:
        """The body of ``/readyz``: no process of another workload (the port is open)."""
        doc: dict[str, Any] = {
            "ready": self.serving(alive),
            "alive": alive,
            "converged": self.converged,
            "host": self.host.to_json(),
            "counts": self.counts(),
            "not_converged": [
                s.to_json() for _, s in sorted(self.functions.items()) if not s.state.accepted
            ],
            "detail": "which process holds what, and each failure's detail: "
            "`vfio-manager status` on the node, or the daemon's log",
        }
        if not self.reconciled:
            doc["reason"] = "the first reconcile has not finished"
        if self.error is not None:
            doc["error"] = "the last reconcile failed; the daemon's log says why"
        return doc


def addresses(bdfs: Iterable[str]) -> frozenset[PciAddress]:
    """Canonical BDF strings as addresses; anything that is not a BDF is dropped."""
    found = (PciAddress.from_sysfs_name(b) for b in bdfs)
    return frozenset(a for a in found if a is not None)


class PipelineReconciler:
    """``bind_all`` per call under the node lock with the current ``selection``, without the
    admin's intents or ``skip``; what this daemon selected before and no longer does goes
    back to the host. A partial call re-plans the affected groups and, moving nothing, keeps
    the last host verdict."""

    def __init__(
        self,
        node: Node,
        bind_all: TransitionRequest,
        selection: Optional[Callable[[], Selector]] = None,
    ) -> None:
        self.node, self.bind_all, self.selector = node, bind_all, bind_all.selector
        self.selection = selection or (lambda: bind_all.selector)
        self.intents = IntentStore(node.state_dir)
        self.host = HOST_READY
        self.managed: set[str] = set()  # selected at some reconcile, and on vfio since
        self.restored: frozenset[PciAddress] = frozenset()  # PFs given back their VFs' count

    def __call__(self, request: ReconcileRequest) -> ReconcileOutcome:
        from vfio_manager.host.preflight import PreflightFailed

        def sleep(seconds: float) -> None:  # between polls for the lock
            if request.stop_requested():
                raise VfioManagerError(
                    "stopping: gave up waiting for the node lock "
                    "(another vfio-manager run holds it)"
                )
            time.sleep(seconds)

        self.selector = self.selection()
        with self.node.lock(sleep=sleep) as lock:
            intents = self.intents.read()
            scope = None if request.affected is None else addresses(request.affected)
            left_alone = addresses(intents.keys() | request.skip)
            transition = replace(
                self.bind_all, selector=self.selector, exclude=left_alone, scope=scope
            )
            try:
                result = run_transition(self.node, transition, lock=lock)
                outcome = self._outcome(result, scope, intents, request.skip)
                topology = result.topology or read_topology(self.node.sysfs())
            except PreflightFailed as failed:  # not an error: the host is not ready
                checks = tuple(HostCheck(c.name, c.detail, c.remedy) for c in failed.failing)
                self.host = HostReadiness(ok=False, failing=checks)
                topology = failed.topology or read_topology(self.node.sysfs())
                names = ", ".join(c.name for c in checks)
                reason = f"the host is not ready ({names}): nothing is written until it is"
                remedy = "fix the failing host checks (see /readyz or `vfio-manager check`)"
                states = (
                    _labelled(
                        self._left_out(f, intents, frozenset())
                        or _as_found(f, reason, remedy, Reason.HOST_NOT_READY),
                        f,
                    )
                    for f in self._in_scope(topology, scope)
                )
                outcome = ReconcileOutcome(tuple(states), self.host)
            home = self._release(topology, scope, intents, request.skip, lock)
            home = self._bind_restored(home, transition, lock)
            return replace(
                outcome,
                functions=outcome.functions + home.functions,
                transitions=outcome.transitions + home.transitions,
                journal=self._journal(),
            )

    def _release(
        self,
        topology: Topology,
        scope: Scope,
        intents: Intents,
        skip: frozenset[str],
        lock: NodeLock,
    ) -> ReconcileOutcome:
        """Functions that left the selection go back to the host (unbind-all's path and
        refusals: a held one stays, reported, and goes at a later reconcile). Never an
        excluded one, an intent's, or one waiting for its retry (reported as it is)."""
        chosen = {f.bdf for f in self._in_scope(topology, None)}
        on_vfio = {f.bdf for f in topology.functions.values() if is_vfio_driver(f.driver)}
        self.managed = (self.managed & on_vfio) | chosen
        members = None if scope is None else in_groups_of(topology, scope)
        leaving = [
            f
            for a, f in sorted(topology.functions.items())
            if f.bdf in self.managed - chosen
            and a not in self.selector.exclude
            and f.bdf not in intents
            and (members is None or a in members)
        ]
        why = "it left the selection: it goes back to the host"
        retry = f"{why}; waiting for its retry"
        waiting = [
            _labelled(FunctionState(f.bdf, State.PENDING, retry, None, LEFT), f)
            for f in leaving
            if f.bdf in skip
        ]
        moving = frozenset(f.address for f in leaving if f.bdf not in skip)
        if not moving:
            return ReconcileOutcome(tuple(waiting))
        # VFs leaving with their PF's count: the PF goes back to its SR-IOV origin after them
        found = {topology.get(f.physfn) for f in leaving if f.physfn is not None}
        pfs = {pf.address: pf for pf in found if pf is not None and not self.selector.vf_count(pf)}
        moving |= pfs.keys()
        home = Selector(vendor=None, pci_class=None, bdfs=moving)
        result = run_transition(self.node, TransitionRequest(home, Direction.TO_HOST), lock=lock)
        entries = {e.function.bdf: e for e in result.plan.entries}
        states, transitions = list(waiting), []
        for o in result.report.outcomes if result.report is not None else ():
            if o.result is not Result.CONVERGED:
                transitions.append(LastTransition(o.bdf, Direction.TO_HOST, o.result, o.reason))
            pf = pfs.get(entries[o.bdf].address)
            if pf is not None and o.result is Result.CHANGED and self.selector.matches(pf):
                self.restored |= {pf.address}
            if o.result in (Result.CHANGED, Result.CONVERGED):
                log.info("returned to the host: it left the selection", bdf=o.bdf, driver=o.driver)
                self.managed.discard(o.bdf)
                continue
            state = self._planned(entries[o.bdf].function, entries[o.bdf], o)
            if state is not None and state.cause in (Reason.IN_USE, Reason.HOST_CRITICAL):
                remedy = "it goes back to the host once nothing holds it"
                state = replace(state, reason=f"{why}; {state.reason}", remedy=remedy, cause=LEFT)
            if state is not None:
                states.append(_labelled(state, entries[o.bdf].function))
        return ReconcileOutcome(tuple(states), transitions=tuple(transitions))

    def _bind_restored(
        self, home: ReconcileOutcome, transition: TransitionRequest, lock: NodeLock
    ) -> ReconcileOutcome:
        """A selected PF just given back its VFs' count can be bound itself: now, not at the
        next resync (its PF-with-VFs refusal of this reconcile is replaced)."""
        restored, self.restored = self.restored, frozenset()
        if not restored:
            return home
        from vfio_manager.host.preflight import PreflightFailed

        only = replace(self.selector, bdfs=restored, per_numa_node=None)
        try:
            result = run_transition(
                self.node, replace(transition, selector=only, scope=None), lock=lock
            )
        except PreflightFailed:
            return home  # the next reconcile says why
        outcomes = {o.bdf: o for o in result.report.outcomes} if result.report else {}
        states = [
            _labelled(state, e.function)
            for e in result.plan.entries
            if (state := self._planned(e.function, e, outcomes.get(e.function.bdf)))
        ]
        moved = [
            LastTransition(o.bdf, Direction.TO_VFIO, o.result, o.reason)
            for o in outcomes.values()
            if o.result is not Result.CONVERGED
        ]
        functions, transitions = home.functions + tuple(states), home.transitions + tuple(moved)
        return replace(home, functions=functions, transitions=transitions)

    def _journal(self) -> tuple[tuple[str, Optional[float]], ...]:
        """The journal's pending records (read-only); none when it cannot be read."""
        try:
            records = self.node.journal(readonly=True).pending()
        except VfioManagerError:
            return ()
        return tuple((r.bdf or "?", _unix_time(r.started_at)) for r in records)

    def _in_scope(self, topology: Topology, scope: Scope) -> list[PciFunction]:
        """The selected functions (the excluded ones too: reported) in ``scope``'s groups."""
        functions = selected_functions(topology, replace(self.selector, exclude=frozenset()))
        members = None if scope is None else in_groups_of(topology, scope)
        return [f for f in functions if members is None or f.address in members]

    def _left_out(
        self, function: PciFunction, intents: Intents, skip: frozenset[str]
    ) -> Optional[FunctionState]:
        """The state of a function the run was told to leave alone, else ``None``."""
        bdf = function.bdf
        if function.address in self.selector.exclude:
            reason = "excluded (--exclude, VFIO_MANAGER_EXCLUDE or the node configuration)"
            remedy = "take it out of the exclusions to manage it"
            return FunctionState(bdf, State.EXCLUDED, reason, remedy, Reason.EXCLUDED)
        if (intent := intents.get(bdf)) is not None:
            hand_back = f"`vfio-manager bind {bdf}` hands it back to the daemon"
            return FunctionState(
                bdf, State.INTENT_HOST, intent.describe(), hand_back, Reason.INTENT
            )
        if bdf in skip:
            return _as_found(
                function, "waiting for its retry after a failure", cause=Reason.BACKOFF
            )
        return None

    def _outcome(
        self, result: TransitionResult, scope: Scope, intents: Intents, skip: frozenset[str]
    ) -> ReconcileOutcome:
        for note in result.notes:
            log.info("reconcile note", note=note)
        if result.topology is None:  # only a dry run has none
            raise RuntimeError("the pipeline returned no topology")
        in_scope = self._in_scope(result.topology, scope)
        left_out = {f.bdf: self._left_out(f, intents, skip) for f in in_scope}
        # journal settlements outside the scope included; a record of an unselected function
        # is one the run refused to settle (the engine logged it); a VF its PF brings is selected
        vfs = self.selector.vfs
        chosen = {f.bdf for f in self._in_scope(result.topology, None)} if vfs else set()
        entries = {
            e.function.bdf: e
            for e in result.plan.entries
            if e.function.bdf in chosen or self.selector.matches(e.function)
        }
        outcomes = {o.bdf: o for o in result.report.outcomes} if result.report is not None else {}
        functions = {f.bdf: f for f in in_scope} | {b: e.function for b, e in entries.items()}
        states = (
            (left_out.get(b) or self._planned(f, entries.get(b), outcomes.get(b)), f)
            for b, f in sorted(functions.items())
        )
        transitions = (
            LastTransition(b, e.direction, o.result, o.reason)
            for b, e in entries.items()
            if (o := outcomes.get(b)) is not None and o.result is not Result.CONVERGED
        )
        if scope is None or any(s is None for s in left_out.values()):
            self.host = HOST_READY  # the gate passed, or nothing needed it
        found = tuple(_labelled(s, f) for s, f in states if s is not None)
        return ReconcileOutcome(found, self.host, tuple(transitions))

    def _planned(
        self, function: PciFunction, entry: Optional[FunctionPlan], outcome: Optional[Outcome]
    ) -> Optional[FunctionState]:
        """The state of a function the run planned; ``None`` when it vanished meanwhile."""
        bdf = function.bdf
        if entry is None or outcome is None:
            return _as_found(function, "not planned", cause=Reason.GROUP)
        if outcome.journal_error is not None:
            return FunctionState(
                bdf,
                State.FAILED,
                f"the journal was not updated: {outcome.journal_error}",
                "the state directory must be writable and not full",
                Reason.JOURNAL,
            )
        if outcome.result in (Result.CHANGED, Result.CONVERGED):
            return FunctionState(bdf, State.CONVERGED)
        if outcome.result is Result.REFUSED:
            kind = entry.refusal_kind or RefusalKind.KERNEL
            held = kind in (RefusalKind.IN_USE, RefusalKind.HOST_CRITICAL)
            state = State.HELD if held else State.PENDING
            return FunctionState(bdf, state, outcome.reason, outcome.remedy, Reason(kind.value))
        if not self.node.sysfs().function_exists(function.address):
            return None  # gone: its remove uevent drops it from the view
        reason = outcome.reason or "failed"
        if outcome.restored_to:
            reason += f" (restored to {outcome.restored_to})"
        return FunctionState(bdf, State.FAILED, reason, outcome.remedy, _failure(outcome))


def _labelled(state: FunctionState, function: PciFunction) -> FunctionState:
    return replace(state, product=product_label(function))


def _unix_time(text: Optional[str]) -> Optional[float]:
    """A journal record's ``started_at`` (``2024-05-01T12:00:00+00:00``) as Unix time."""
    try:
        return float(calendar.timegm(time.strptime((text or "")[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def _failure(outcome: Outcome) -> Reason:
    if outcome.stuck:
        return Reason.STUCK_WRITE
    if outcome.errno in (errno_mod.EIO, errno_mod.ENODEV, errno_mod.ETIMEDOUT):
        return Reason.NOT_RESPONDING
    return Reason.TRANSITION_FAILED


def _as_found(
    function: PciFunction, reason: str, remedy: Optional[str] = None, cause: Reason = Reason.NONE
) -> FunctionState:
    """Converged when it is on a vfio driver already, else pending for ``reason``."""
    if is_vfio_driver(function.driver):
        return FunctionState(function.bdf, State.CONVERGED)
    return FunctionState(function.bdf, State.PENDING, reason, remedy, cause)


class OnExit(str, enum.Enum):
    """``--on-exit``: keep everything on vfio, return what no process holds, or return all."""

    KEEP = "keep"
    RELEASE_IDLE = "release-idle"
    RELEASE = "release"


def on_exit_action(
    mode: OnExit, node: Node, selection: Callable[[], Selector]
) -> Callable[[], None]:
    """The loop's ``on_exit`` for ``mode`` over the selection then; its excluded functions
    are never touched."""

    def on_exit() -> None:
        if mode is OnExit.KEEP:
            log.info("on exit: functions kept where they are (--on-exit keep)")
            return
        selector = selection()
        with node.lock() as lock:
            held = _held_groups(node, selector) if mode is OnExit.RELEASE_IDLE else frozenset()
            if held:
                log.info(
                    "on exit: kept on vfio, their group is in use",
                    bdfs=sorted(str(a) for a in held),
                )
            request = TransitionRequest(selector, Direction.TO_HOST, exclude=held)
            result = run_transition(node, request, lock=lock)
        moved = result.report.outcomes if result.report is not None else ()
        for o in moved:
            log.info(
                "on exit",
                mode=mode.value,
                bdf=o.bdf,
                outcome=o.result.value,
                driver=o.driver,
                reason=o.reason,
            )
        if result.exit_code != ExitCode.OK:
            bad = [
                o for o in moved if o.result in (Result.REFUSED, Result.FAILED) or o.journal_error
            ]
            names = ", ".join(f"{o.bdf} {o.result.value}: {o.reason}" for o in bad)
            raise VfioManagerError(
                f"--on-exit {mode.value}: not every function went back to the host "
                f"({names or 'see the log'})",
                remedy="stop what holds them (a VM), then run `vfio-manager unbind-all`",
            )

    return on_exit


def _held_groups(node: Node, selector: Selector) -> frozenset[PciAddress]:
    """Every member of each IOMMU group a process holds through a selected function on vfio."""
    from vfio_manager.safety.holders import find_holders

    sysfs = node.sysfs()
    topology = read_topology(sysfs)
    in_vfio = [f for f in selected_functions(topology, selector) if is_vfio_driver(f.driver)]
    holders = find_holders(sysfs, node.proc_root, in_vfio)
    return in_groups_of(topology, (address for address, found in holders.items() if found))

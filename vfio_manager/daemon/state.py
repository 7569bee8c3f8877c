"""The daemon's state model: what each function is, from the daemon's point of view.

A one-shot command reports what it did (changed, converged, refused, failed). A daemon
reports where each function *is* against what it wants, continuously, and that drives the
ready file, ``/readyz``, the metrics and systemd's ``STATUS=``. One vocabulary for all of
them lives here:

``converged``    on the target driver (vfio), nothing to do.
``pending``      not on its target yet and not failed: not tried yet, or the host is not
                 ready, or it waits for its retry (backoff) after a failure.
``held``         a process holds it or its group (a VM, a program with the native device
                 open): the daemon never touches it and says who.
``excluded``     named with ``--exclude``: never touched.
``failed``       the last attempt failed; the reason is the kernel's, retried with backoff.
``intent-host``  the admin ran ``vfio-manager unbind`` while the daemon was up: left on the
                 host until ``bind`` clears the intent.

The node is *converged* when the host is ready and every function is converged, excluded
or left on the host by intent: those are settled by choice. Pending, held and failed
functions keep the node not ready, and ``/readyz`` names each with its reason.

Why a model of its own rather than the engine's outcomes: the daemon's reconciler is
injected (the write pipeline is one layer down and owns transitions), so the loop needs a
small contract that does not move when the pipeline does. The reconciler maps its results
onto these values.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from vfio_manager.kernel.drivers import Direction


class State(str, enum.Enum):
    CONVERGED = "converged"
    PENDING = "pending"
    HELD = "held"
    EXCLUDED = "excluded"
    FAILED = "failed"
    INTENT_HOST = "intent-host"

    @property
    def settled(self) -> bool:
        """True for states that do not keep the node from being ready."""
        return self in _SETTLED


_SETTLED = frozenset({State.CONVERGED, State.EXCLUDED, State.INTENT_HOST})


class TransitionOutcome(str, enum.Enum):
    """How an attempted transition ended (converged functions are not transitions)."""

    CHANGED = "changed"
    FAILED = "failed"
    REFUSED = "refused"


@dataclass(frozen=True)
class FunctionStatus:
    """One function's state; ``reason`` and ``remedy`` say why it is not converged."""

    bdf: str
    state: State
    reason: Optional[str] = None
    remedy: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return {
            "bdf": self.bdf,
            "state": self.state.value,
            "reason": self.reason,
            "remedy": self.remedy,
        }


@dataclass(frozen=True)
class HostCheck:
    """A failing host readiness check (``vfio-manager check`` names), with its remedy."""

    name: str
    detail: str
    remedy: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "detail": self.detail, "remedy": self.remedy}


@dataclass(frozen=True)
class HostReadiness:
    ok: bool
    failing: tuple[HostCheck, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"ready": self.ok, "failing": [c.to_json() for c in self.failing]}


HOST_READY = HostReadiness(ok=True)


@dataclass(frozen=True)
class TransitionRecord:
    """One attempted transition of one reconcile, for the transitions counter and the log."""

    bdf: str
    direction: Direction
    outcome: TransitionOutcome
    reason: Optional[str] = None


def _never() -> bool:
    return False


@dataclass(frozen=True)
class ReconcileRequest:
    """What the loop asks of the reconciler.

    ``affected``: the functions to re-plan (with their IOMMU group peers), or ``None`` for a
    full resync of every selected function. ``skip``: functions still waiting for their
    retry after a failure; the reconciler reads and reports them but must not write to them.
    ``stop_requested``: true once SIGTERM/SIGINT arrived; a reconciler may check it between
    functions to finish sooner (it must still finish the function it is moving).
    """

    affected: Optional[frozenset[str]]
    skip: frozenset[str] = frozenset()
    stop_requested: Callable[[], bool] = field(default=_never, compare=False, repr=False)

    @property
    def full(self) -> bool:
        return self.affected is None


@dataclass(frozen=True)
class ReconcileOutcome:
    """What the reconciler found and did.

    ``functions`` covers every function it looked at: all selected ones for a full resync;
    for a partial one, the affected functions that still exist, plus any group peers it
    re-planned. An affected BDF missing from ``functions`` is gone (removed) and is dropped
    from the daemon's view. ``host`` is the readiness gate's verdict; when it is not ok,
    nothing was written.
    """

    functions: tuple[FunctionStatus, ...]
    host: HostReadiness = HOST_READY
    transitions: tuple[TransitionRecord, ...] = ()


def count_states(statuses: Iterable[FunctionStatus]) -> dict[str, int]:
    """``{state: count}`` with every state present (zeros included), in declaration order."""
    counts = {s.value: 0 for s in State}
    for status in statuses:
        counts[status.state.value] += 1
    return counts


@dataclass(frozen=True)
class NodeView:
    """The daemon's merged picture of the node after the last reconcile.

    ``reconciled`` is False until the first reconcile finished; ``error`` is set when the last
    reconcile raised (a lock timeout, an unwritable state directory), in which case the view
    is not trusted as converged.
    """

    functions: Mapping[str, FunctionStatus] = field(default_factory=dict)
    host: HostReadiness = HOST_READY
    reconciled: bool = False
    error: Optional[str] = None

    @property
    def converged(self) -> bool:
        return (
            self.reconciled
            and self.error is None
            and self.host.ok
            and all(s.state.settled for s in self.functions.values())
        )

    def counts(self) -> dict[str, int]:
        return count_states(self.functions.values())

    def not_converged(self) -> list[FunctionStatus]:
        return [
            self.functions[b] for b in sorted(self.functions) if not self.functions[b].state.settled
        ]

    def merge(self, request: ReconcileRequest, outcome: ReconcileOutcome) -> NodeView:
        """The view after ``outcome``: a full resync replaces it, a partial one patches it."""
        if request.affected is None:
            functions = {s.bdf: s for s in outcome.functions}
        else:
            functions = {b: s for b, s in self.functions.items() if b not in request.affected}
            functions.update((s.bdf, s) for s in outcome.functions)
        return NodeView(functions=functions, host=outcome.host, reconciled=True, error=None)

    def failed_with(self, error: str) -> NodeView:
        return NodeView(self.functions, self.host, reconciled=self.reconciled, error=error)

    def to_json(self) -> dict[str, Any]:
        """The body of ``/readyz``: every function that is not converged, and why."""
        doc: dict[str, Any] = {
            "ready": self.converged,
            "host": self.host.to_json(),
            "counts": self.counts(),
            "not_converged": [s.to_json() for s in self.not_converged()],
        }
        if not self.reconciled:
            doc["reason"] = "the first reconcile has not finished"
        if self.error is not None:
            doc["error"] = self.error
        return doc


@dataclass(frozen=True)
class ReconcileReport:
    """One finished reconcile, as the loop hands it to the metrics and the log.

    ``outcome`` is ``None`` when the reconciler raised (``error`` says what). ``succeeded``:
    it ran to the end and no function failed (held or pending functions are not failures).
    """

    full: bool
    duration: float
    finished_at: float
    view: NodeView
    outcome: Optional[ReconcileOutcome] = None
    error: Optional[str] = None

    @property
    def succeeded(self) -> bool:
        return (
            self.error is None
            and self.outcome is not None
            and all(s.state is not State.FAILED for s in self.outcome.functions)
        )

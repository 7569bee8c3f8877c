"""Test doubles for the daemon: a node whose reconciler follows the loop's contract, a systemd
stand-in, and a reader of the metrics text. (Fake time is tests.support.FakeClock.)"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Optional

from prometheus_client.parser import text_string_to_metric_families

from vfio_manager.daemon.health import socket_address
from vfio_manager.daemon.reconciler import (
    FunctionState,
    HostCheck,
    HostReadiness,
    LastTransition,
    Reason,
    ReconcileOutcome,
    ReconcileRequest,
    State,
)
from vfio_manager.kernel.drivers import Direction
from vfio_manager.pipeline.engine import Result
from vfio_manager.safety.intents import IntentStore

VFIO = "vfio-pci"


@dataclass
class FakeNode:
    """Functions and their drivers; the reconciler below moves them to vfio per the contract.

    ``failing``: BDF -> the kernel's reason, for functions whose transition fails.
    ``rebind``: BDFs that something else moves back to the native driver right after us.
    """

    drivers: dict[str, Optional[str]] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)
    excluded: set[str] = field(default_factory=set)
    failing: dict[str, str] = field(default_factory=dict)
    host_failing: list[HostCheck] = field(default_factory=list)
    intents: Optional[IntentStore] = None
    requests: list[ReconcileRequest] = field(default_factory=list)
    error: Optional[Exception] = None
    during: Optional[object] = None  # called (no arguments) in the middle of a reconcile

    def reconcile(self, request: ReconcileRequest) -> ReconcileOutcome:
        self.requests.append(request)
        if callable(self.during):
            self.during()
        if self.error is not None:
            raise self.error
        host = HostReadiness(not self.host_failing, tuple(self.host_failing))
        intents = self.intents.bdfs() if self.intents is not None else frozenset()
        scope = sorted(self.drivers if request.affected is None else request.affected)
        statuses: list[FunctionState] = []
        transitions: list[LastTransition] = []
        for bdf in scope:
            if bdf not in self.drivers:
                continue  # gone
            status, transition = self._one(bdf, request, host, intents)
            statuses.append(status)
            if transition is not None:
                transitions.append(transition)
        return ReconcileOutcome(tuple(statuses), host, tuple(transitions))

    def _one(  # noqa: PLR0911 - one return per state of the contract
        self,
        bdf: str,
        request: ReconcileRequest,
        host: HostReadiness,
        intents: frozenset[str],
    ) -> tuple[FunctionState, Optional[LastTransition]]:
        if bdf in self.excluded:
            return FunctionState(bdf, State.EXCLUDED, "--exclude", cause=Reason.EXCLUDED), None
        if bdf in intents:
            intent = FunctionState(bdf, State.INTENT_HOST, "left by intent", cause=Reason.INTENT)
            return intent, None
        if self.drivers[bdf] == VFIO:
            return FunctionState(bdf, State.CONVERGED), None
        if bdf in self.held:
            return FunctionState(
                bdf, State.HELD, "PID 812 (qemu) holds it", cause=Reason.IN_USE
            ), None
        if not host.ok or bdf in request.skip:
            cause = Reason.BACKOFF if host.ok else Reason.HOST_NOT_READY
            return FunctionState(bdf, State.PENDING, "not attempted", cause=cause), None
        if bdf in self.failing:
            reason = self.failing[bdf]
            record = LastTransition(bdf, Direction.TO_VFIO, Result.FAILED, reason)
            return FunctionState(bdf, State.FAILED, reason, cause=Reason.TRANSITION_FAILED), record
        self.drivers[bdf] = VFIO
        record = LastTransition(bdf, Direction.TO_VFIO, Result.CHANGED)
        return FunctionState(bdf, State.CONVERGED), record


class Listener:
    """A systemd stand-in: a bound AF_UNIX datagram socket; reads wait at most 10 s."""

    def __init__(self, address: str) -> None:
        self.env_value = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bound = socket_address(address)
        assert bound is not None
        self.sock.bind(bound)
        self.sock.settimeout(10)

    def message(self) -> list[str]:
        return self.sock.recv(4096).decode().split("\n")

    def pending(self) -> list[list[str]]:
        """Every message already queued, without waiting."""
        found = []
        self.sock.setblocking(False)
        try:
            while True:
                found.append(self.sock.recv(4096).decode().split("\n"))
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(10)
        return found

    def close(self) -> None:
        self.sock.close()


def sample(text: str, name: str, **labels: str) -> Optional[float]:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None

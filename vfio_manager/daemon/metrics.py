"""Prometheus metrics of the daemon, in a registry of its own.

Why prometheus-client: the text exposition format has escaping, ``# TYPE``/``# HELP``,
histogram buckets with ``le`` and ``+Inf``, counters with ``_total``; the client gets them
right and is what every scraper is tested against. It is imported only when ``--listen``
is set (this module is imported lazily by the CLI), so ``status`` and a daemon without
``--listen`` do not pay for it.

Why a registry of our own rather than the global one: tests build several, and the output
has exactly the series documented in docs/daemon.md, plus the process collector
(``process_resident_memory_bytes``, ``process_cpu_seconds_total``: the daemon's budgets).

Names (all ``vfio_manager_``):

``functions{state}``                                   gauge, every state present (0 included)
``node_converged``                                     gauge 0/1, the ready file's condition
``transitions_total{direction,outcome}``               counter; direction vfio|host,
                                                       outcome changed|failed|refused
``reconcile_duration_seconds{scope}``                  histogram; scope full|partial
``reconcile_errors_total``                             counter: reconciles that raised
``last_successful_reconcile_timestamp_seconds``        gauge, Unix time
``uevents_total{action}``                              counter: PCI uevents acted on
``host_ready``                                         gauge 0/1
``host_check_failing{check}``                          gauge 1 while that check fails, then 0
``build_info{version,python}``                         gauge 1
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence

import prometheus_client
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.process_collector import ProcessCollector

from vfio_manager import __version__
from vfio_manager.daemon.state import ReconcileReport, State, TransitionOutcome
from vfio_manager.daemon.uevents import PCI_ACTIONS, Uevent
from vfio_manager.kernel.drivers import Direction

PREFIX = "vfio_manager"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# ``*_created`` series double the output and mean nothing for a node agent. (Called through a
# typed name: the client leaves this function unannotated.)
_disable_created: Callable[[], object] = prometheus_client.disable_created_metrics
_disable_created()


class DaemonMetrics:
    """Implements the loop's metrics sink; :meth:`render` gives the ``/metrics`` answer."""

    def __init__(self, *, version: str = __version__, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if process:
            ProcessCollector(registry=self.registry)
        r = self.registry
        self.functions = Gauge(
            f"{PREFIX}_functions", "Selected PCI functions by daemon state.", ["state"], registry=r
        )
        self.node_converged = Gauge(
            f"{PREFIX}_node_converged",
            "1 while every function is settled and the host is ready (the ready file exists).",
            registry=r,
        )
        self.transitions = Counter(
            f"{PREFIX}_transitions",
            "Transitions attempted by the daemon, by direction and outcome.",
            ["direction", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            f"{PREFIX}_reconcile_duration_seconds",
            "Time spent in one reconcile (full resync or the functions a uevent batch named).",
            ["scope"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            f"{PREFIX}_reconcile_errors",
            "Reconciles that raised (lock timeout, state directory unusable, ...).",
            registry=r,
        )
        self.last_success = Gauge(
            f"{PREFIX}_last_successful_reconcile_timestamp_seconds",
            "Unix time of the last reconcile that finished with no failed function.",
            registry=r,
        )
        self.uevents = Counter(
            f"{PREFIX}_uevents", "Kernel uevents acted on, by action.", ["action"], registry=r
        )
        self.host_ready = Gauge(
            f"{PREFIX}_host_ready", "1 when the host readiness checks pass.", registry=r
        )
        self.host_check_failing = Gauge(
            f"{PREFIX}_host_check_failing",
            "1 while the named host readiness check fails (0 once it passes again).",
            ["check"],
            registry=r,
        )
        Info(f"{PREFIX}_build", "vfio-manager build information.", registry=r).info(
            {"version": version, "python": platform.python_version()}
        )
        for state in State:
            self.functions.labels(state.value).set(0)
        for direction in Direction:
            for outcome in TransitionOutcome:
                self.transitions.labels(direction.value, outcome.value)
        for action in sorted(PCI_ACTIONS):
            self.uevents.labels(action)
        for scope in ("full", "partial"):
            self.duration.labels(scope)
        self._failing_checks: set[str] = set()

    # -- the loop's sink -------------------------------------------------------------------
    def observe_uevents(self, events: Sequence[Uevent]) -> None:
        for event in events:
            self.uevents.labels(event.action).inc()

    def observe_reconcile(self, report: ReconcileReport) -> None:
        self.duration.labels("full" if report.full else "partial").observe(report.duration)
        if report.error is not None:
            self.errors.inc()
        if report.succeeded:
            self.last_success.set(report.finished_at)
        if report.outcome is not None:
            for t in report.outcome.transitions:
                self.transitions.labels(t.direction.value, t.outcome.value).inc()
        view = report.view
        for state, count in view.counts().items():
            self.functions.labels(state).set(count)
        self.node_converged.set(1 if view.converged else 0)
        self.host_ready.set(1 if view.host.ok else 0)
        failing = {c.name for c in view.host.failing}
        for name in failing | self._failing_checks:
            self.host_check_failing.labels(name).set(1 if name in failing else 0)
        self._failing_checks |= failing

    # -- exposition ------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


__all__ = ["DaemonMetrics"]

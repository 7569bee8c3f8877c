"""The reconcile loop: converge once, then react to uevents, resyncs, retries and signals.

Why a loop of its own, apart from the pipeline: the pipeline (plan, refusals, engine,
journal, lock) decides and writes; the loop decides only *when* to ask it and *what to tell
the world* afterwards (ready file, ``/readyz``, metrics, systemd). The reconciler is injected
(``Callable[[ReconcileRequest], ReconcileOutcome]``), so the loop is tested with a fake one
and real descriptors, and the pipeline can change underneath without touching it.

One thread, one ``poll``: the loop sleeps on the uevent socket and a wakeup pipe (signals),
with a timeout that is the time to the next thing it owes: the next resync, the end of an
open debounce window, a function's retry, or a watchdog ping. Idle, that is one wakeup per
resync interval (plus one per watchdog interval when systemd asks for it).

::

    start: remove a stale ready file, full reconcile
    loop:  wait(uevent fd, wakeup fd, timeout)
           SIGTERM/SIGINT -> leave the loop (the current reconcile has finished)
           SIGHUP (retries now), resync due, driver (un)registered, queue overflow
                                                             -> full reconcile
           debounce window closed, retries due -> reconcile those functions
           after each reconcile: view, backoff, ready file, metrics, STATUS=, READY=1 once
    exit:  STOPPING=1, remove the ready file, on_exit() (--on-exit), exit 0

The reconciler must take the node lock itself, read the admin's intents under it
(:mod:`.intent`), never write to ``request.skip``, and may poll ``request.stop_requested``
between functions. See docs/daemon.md for the contract.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Callable, Optional, Protocol

from vfio_manager.daemon.backoff import (
    DEFAULT_CAP,
    DEFAULT_FLAP_LIMIT,
    DEFAULT_FLAP_WINDOW,
    DEFAULT_INITIAL,
    Backoff,
    FlapGuard,
)
from vfio_manager.daemon.board import StatusBoard
from vfio_manager.daemon.debounce import DEFAULT_WINDOW, Debouncer
from vfio_manager.daemon.notify import Notifier
from vfio_manager.daemon.readiness import ReadyFile
from vfio_manager.daemon.state import (
    FunctionStatus,
    NodeView,
    ReconcileOutcome,
    ReconcileReport,
    ReconcileRequest,
    State,
    TransitionOutcome,
)
from vfio_manager.daemon.uevents import Uevent, UeventBatch, UeventSource
from vfio_manager.errors import VfioManagerError
from vfio_manager.log import get_logger

log = get_logger("vfio_manager.daemon.loop")

Reconciler = Callable[[ReconcileRequest], ReconcileOutcome]

DEFAULT_RESYNC_INTERVAL = 60.0
DEFAULT_STALL_AFTER = 300.0
HEARTBEAT_SLACK = 5.0
_SPURIOUS_WAKEUPS = 100  # readable-but-empty in a row before the source is dropped


class MetricsSink(Protocol):
    """What the loop reports to; :class:`~vfio_manager.daemon.metrics.DaemonMetrics` is one."""

    def observe_uevents(self, events: Sequence[Uevent]) -> None: ...

    def observe_reconcile(self, report: ReconcileReport) -> None: ...


class Waiter(Protocol):
    """Blocks until one of ``fds`` is readable or ``timeout`` seconds pass; the readable ones."""

    def wait(self, fds: Sequence[int], timeout: float) -> set[int]: ...


class PollWaiter:
    """``poll(2)``; the timeout is rounded *up* to whole milliseconds, so the loop never wakes
    a hair early and spins until its deadline."""

    def wait(self, fds: Sequence[int], timeout: float) -> set[int]:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        return {fd for fd, _ in poller.poll(max(0, math.ceil(timeout * 1000)))}


class Wakeup:
    """The loop's doorbell: a non-blocking self-pipe plus the flags of what was asked.

    Signal handlers (installed by :meth:`install_signal_handlers`, main thread only) and tests
    use the same two calls, :meth:`request_stop` and :meth:`request_resync`: set a flag, write
    a byte so ``poll`` returns. A signal that lands just before ``poll`` still leaves its byte
    in the pipe, so no wakeup is lost.
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stop = False
        self._resync = False
        self.stop_signal: Optional[int] = None

    def fileno(self) -> int:
        return self._read_fd

    def stop_requested(self) -> bool:
        """A method, not a property: a signal handler may flip it between two reads."""
        return self._stop

    def request_stop(self, signum: Optional[int] = None) -> None:
        if not self._stop:
            self.stop_signal = signum
        self._stop = True
        self._ring()

    def request_resync(self) -> None:
        self._resync = True
        self._ring()

    def take_resync(self) -> bool:
        asked, self._resync = self._resync, False
        return asked

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read_fd, 512):
                pass

    def _ring(self) -> None:
        # EAGAIN: the pipe is full, so a wakeup is already pending
        with contextlib.suppress(BlockingIOError):
            os.write(self._write_fd, b"\0")

    def install_signal_handlers(self) -> Callable[[], None]:
        """SIGTERM/SIGINT: stop; SIGHUP: resync. Returns a function restoring the old ones."""

        def on_signal(signum: int, frame: Optional[FrameType]) -> None:
            if signum == signal.SIGHUP:
                self.request_resync()
            else:
                self.request_stop(signum)

        previous = {
            sig: signal.signal(sig, on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass(frozen=True)
class LoopSettings:
    """Timing of the loop (seconds). ``stall_after``: how long one reconcile may take before
    ``/healthz`` calls the loop wedged (lock wait + per-function deadlines fit in it)."""

    resync_interval: float = DEFAULT_RESYNC_INTERVAL
    debounce: float = DEFAULT_WINDOW
    backoff_initial: float = DEFAULT_INITIAL
    backoff_cap: float = DEFAULT_CAP
    flap_limit: int = DEFAULT_FLAP_LIMIT
    flap_window: float = DEFAULT_FLAP_WINDOW
    stall_after: float = DEFAULT_STALL_AFTER


def _nothing() -> None:
    return None


def summary(view: NodeView) -> str:
    """One line for systemd's ``STATUS=`` and the log: the state of the node in counts."""
    if view.error is not None:
        return f"not converged: last reconcile failed: {view.error}"
    if not view.reconciled:
        return "starting: first reconcile under way"
    parts = [f"{n} {state}" for state, n in view.counts().items() if n]
    counts = ", ".join(parts) if parts else "no selected function"
    if not view.host.ok:
        names = ", ".join(c.name for c in view.host.failing) or "unknown"
        return f"host not ready ({names}); {counts}"
    return f"{'converged' if view.converged else 'not converged'}: {counts}"


class ReconcileLoop:
    def __init__(
        self,
        reconcile: Reconciler,
        *,
        source: Optional[UeventSource],
        wakeup: Wakeup,
        settings: LoopSettings = LoopSettings(),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        waiter: Optional[Waiter] = None,
        notifier: Optional[Notifier] = None,
        ready_file: Optional[ReadyFile] = None,
        metrics: Optional[MetricsSink] = None,
        board: Optional[StatusBoard] = None,
        on_exit: Callable[[], None] = _nothing,
    ) -> None:
        self.reconciler = reconcile
        self.source = source
        self.wakeup = wakeup
        self.settings = settings
        self.clock = clock
        self.wall_clock = wall_clock
        self.waiter: Waiter = waiter if waiter is not None else PollWaiter()
        self.notifier = notifier if notifier is not None else Notifier(None)
        self.ready_file = ready_file
        self.metrics = metrics
        self.board = board if board is not None else StatusBoard(clock=clock)
        self.on_exit = on_exit
        self.debouncer = Debouncer(settings.debounce, clock=clock)
        self.backoff = Backoff(settings.backoff_initial, settings.backoff_cap, clock=clock)
        self.flaps = FlapGuard(settings.flap_limit, settings.flap_window, clock=clock)
        self.view = NodeView()
        self.reconciles = 0
        self._next_resync = clock()
        self._next_watchdog: Optional[float] = None
        self._ready_sent = False
        self._host_logged: Optional[frozenset[str]] = None
        self._spurious = 0

    # -- the three phases ----------------------------------------------------------------
    def run(self) -> int:
        self.start()
        while self.step():
            pass
        return self.finish()

    def start(self) -> None:
        if self.ready_file is not None:
            self.ready_file.remove()  # a killed daemon may have left one behind
        self.notifier.status(summary(self.view))
        if self.notifier.watchdog_interval is not None:
            self._next_watchdog = self.clock()
        self._ping_watchdog()
        if self.source is None:
            log.info("no uevent source: resync only", interval=self.settings.resync_interval)
        self._reconcile(None)

    def step(self) -> bool:
        """Wait for the next thing to do and do it; False once a stop was requested."""
        if self.wakeup.stop_requested():
            return False
        timeout = self._timeout()
        self.board.beat(timeout + HEARTBEAT_SLACK)
        fds = [self.wakeup.fileno()]
        if self.source is not None:
            fds.append(self.source.fileno())
        ready = self.waiter.wait(fds, timeout)
        if self.wakeup.fileno() in ready:
            self.wakeup.drain()
        if self.wakeup.stop_requested():
            return False
        if self.source is not None and self.source.fileno() in ready:
            self._read_events()
        self._act()
        self._ping_watchdog()
        return True

    def finish(self) -> int:
        """Leave: STOPPING=1, remove the ready file, run ``on_exit``; the exit code."""
        signum = self.wakeup.stop_signal
        reason = signal.Signals(signum).name if signum is not None else "stop requested"
        log.info("stopping", reason=reason)
        self.notifier.stopping(f"stopping ({reason})")
        if self.ready_file is not None:
            self.ready_file.remove()
        code = 0
        try:
            self.on_exit()
        except VfioManagerError as exc:
            log.error("on exit failed", error=exc.message, remedy=exc.remedy)
            code = int(exc.exit_code)
        if self.source is not None:
            self.source.close()
        self.notifier.close()
        log.info("stopped", exit_code=code)
        return code

    # -- deciding ------------------------------------------------------------------------
    def _timeout(self) -> float:
        deadlines = [self._next_resync]
        for candidate in (
            self.debouncer.due_at(),
            self.backoff.next_retry_at(),
            self._next_watchdog,
        ):
            if candidate is not None:
                deadlines.append(candidate)
        return max(0.0, min(deadlines) - self.clock())

    def _read_events(self) -> None:
        if self.source is None:
            return
        batch = self.source.read_pending()
        if batch.events and self.metrics is not None:
            self.metrics.observe_uevents(batch.events)
        for event in batch.events:
            log.debug(
                "uevent",
                action=event.action,
                bdf=event.bdf,
                devpath=event.devpath,
                driver=event.driver,
                seqnum=event.seqnum,
            )
        self.debouncer.add(batch)
        self._spurious = self._spurious + 1 if batch.datagrams == 0 else 0
        if batch.closed or self._spurious >= _SPURIOUS_WAKEUPS:
            log.warning(
                "uevent source lost: the node is re-read at each resync only",
                interval=self.settings.resync_interval,
            )
            self.source.close()
            self.source = None
            self.debouncer.add(UeventBatch(overflowed=True))  # events may be lost: resync

    def _act(self) -> None:
        resync = self.wakeup.take_resync()
        if resync:
            log.info("resync requested (SIGHUP): failed functions are retried now")
            self.backoff.retry_now()
        batch = self.debouncer.take_if_due()
        if resync or self.clock() >= self._next_resync or (batch is not None and batch.full):
            self.debouncer.take()  # a full reconcile covers whatever was pending
            self._reconcile(None)
            return
        affected = set(batch.affected) if batch is not None else set()
        affected |= self.backoff.due()
        if affected:
            self._reconcile(frozenset(affected))

    # -- reconciling ---------------------------------------------------------------------
    def _reconcile(self, affected: Optional[frozenset[str]]) -> None:
        request = ReconcileRequest(
            affected=affected,
            skip=self.backoff.waiting(),
            stop_requested=self.wakeup.stop_requested,
        )
        self.board.beat(self.settings.stall_after)
        self._ping_watchdog()
        started = self.clock()
        outcome: Optional[ReconcileOutcome] = None
        error: Optional[str] = None
        try:
            outcome = self.reconciler(request)
        except VfioManagerError as exc:
            error = exc.message
            log.error("reconcile failed", error=exc.message, remedy=exc.remedy)
        except Exception as exc:  # a daemon reports a bug and keeps serving
            error = f"{type(exc).__name__}: {exc}"
            log.error("reconcile crashed (a bug: please report it)", error=error, exc_info=True)
        duration = self.clock() - started
        self.reconciles += 1
        if request.full:
            self._next_resync = self.clock() + self.settings.resync_interval
        if outcome is not None:
            self.view = self._merge(request, outcome)
        else:
            self.view = self.view.failed_with(error or "unknown error")
        self._publish(
            ReconcileReport(
                full=request.full,
                duration=duration,
                finished_at=self.wall_clock(),
                view=self.view,
                outcome=outcome,
                error=error,
            )
        )

    def _merge(self, request: ReconcileRequest, outcome: ReconcileOutcome) -> NodeView:
        """Backoff and flap bookkeeping, then the view with waiting functions shown failed."""
        flapping = {
            t.bdf
            for t in outcome.transitions
            if t.outcome is TransitionOutcome.CHANGED and self.flaps.moved(t.bdf)
        }
        for t in outcome.transitions:
            level = log.info if t.outcome is TransitionOutcome.CHANGED else log.warning
            level(
                "transition",
                bdf=t.bdf,
                direction=t.direction.value,
                outcome=t.outcome.value,
                reason=t.reason,
            )
        statuses = tuple(self._account(s, request, s.bdf in flapping) for s in outcome.functions)
        seen = {s.bdf for s in statuses}
        gone = (self.backoff.keys() if request.full else request.affected or frozenset()) - seen
        for bdf in gone:
            self.backoff.forget(bdf)
            self.flaps.forget(bdf)
        return self.view.merge(
            request, ReconcileOutcome(statuses, outcome.host, outcome.transitions)
        )

    def _account(
        self, status: FunctionStatus, request: ReconcileRequest, flapping: bool
    ) -> FunctionStatus:
        bdf = status.bdf
        if bdf in request.skip:
            if status.state is State.PENDING:
                return FunctionStatus(
                    bdf, State.FAILED, self.backoff.reason(bdf), self._retry_remedy(bdf)
                )
            return status
        if flapping:
            reason = (
                f"moved back to the host more than {self.flaps.limit} times within "
                f"{self.flaps.window:g}s: something else binds it (a udev rule, another agent)"
            )
            delay = self.backoff.failed(bdf, reason)
            log.error("function flapping", bdf=bdf, reason=reason, retry_in=delay)
            return FunctionStatus(bdf, State.FAILED, reason, "find and stop what rebinds it")
        if status.state is State.FAILED:
            delay = self.backoff.failed(bdf, status.reason)
            log.error(
                "function failed",
                bdf=bdf,
                reason=status.reason,
                remedy=status.remedy,
                attempt=self.backoff.failures(bdf),
                retry_in=delay,
            )
            return status
        if status.state.settled:
            self.backoff.succeeded(bdf)
        else:
            self.backoff.park(bdf)
        return status

    def _retry_remedy(self, bdf: str) -> str:
        retry_at = self.backoff.retry_at(bdf)
        wait = max(0.0, retry_at - self.clock()) if retry_at is not None else 0.0
        return (
            f"retried automatically in {wait:.0f}s (attempt {self.backoff.failures(bdf) + 1}); "
            "a SIGHUP retries now"
        )

    def _publish(self, report: ReconcileReport) -> None:
        view = report.view
        self.board.publish(view)
        if self.ready_file is not None:
            self.ready_file.update(view.converged, view.counts())
        if self.metrics is not None:
            self.metrics.observe_reconcile(report)
        self._log_host(view)
        line = summary(view)
        if view.converged and not self._ready_sent:
            self._ready_sent = True
            self.notifier.ready(line)
            log.info("converged", summary=line)
        else:
            self.notifier.status(line)
        log.debug(
            "reconciled",
            scope="full" if report.full else "partial",
            duration=round(report.duration, 4),
            summary=line,
        )

    def _log_host(self, view: NodeView) -> None:
        """The host's failing checks, once per distinct set; once more when it recovers."""
        failing = frozenset(c.name for c in view.host.failing)
        if view.host.ok:
            if self._host_logged:
                log.info("host ready again")
            self._host_logged = frozenset()
            return
        if failing != self._host_logged:
            self._host_logged = failing
            for check in view.host.failing:
                log.error(
                    "host not ready: nothing is written until it is (re-checked at each resync)",
                    check=check.name,
                    detail=check.detail,
                    remedy=check.remedy,
                )

    def _ping_watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is None or self._next_watchdog is None:
            return
        now = self.clock()
        if now >= self._next_watchdog:
            self.notifier.watchdog()
            self._next_watchdog = now + interval


__all__ = [
    "LoopSettings",
    "MetricsSink",
    "PollWaiter",
    "ReconcileLoop",
    "Reconciler",
    "Waiter",
    "Wakeup",
    "summary",
]

"""The reconcile loop: when to reconcile (uevents, resyncs, retries, signals) and what to tell
afterwards. One thread and one ``poll`` (uevent socket, wakeup pipe) whose timeout is the next
thing owed; the reconciler is injected. docs/daemon.md has the loop and its contract."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from types import FrameType
from typing import Optional

from vfio_manager.daemon.health import DaemonMetrics, NodeFile, Notifier, ReadyFile
from vfio_manager.daemon.reconciler import (
    FunctionState,
    NodeView,
    Reason,
    ReconcileOutcome,
    ReconcileRequest,
    State,
)
from vfio_manager.errors import VfioManagerError
from vfio_manager.kernel.uevents import DatagramUeventSource, PollWaiter, UeventBatch, Waiter
from vfio_manager.log import get_logger
from vfio_manager.pipeline.engine import Result

log = get_logger("vfio_manager.daemon.loop")

Clock = Callable[[], float]
HEARTBEAT_SLACK = 5.0  # beyond the wait's timeout before /healthz calls the loop wedged
_SPURIOUS_WAKEUPS = 100  # readable-but-empty in a row before the source is dropped


@dataclass(frozen=True)
class Batch:
    """The functions a window of events touched; ``full``: re-plan every function."""

    affected: frozenset[str] = frozenset()
    full: bool = False


class Debouncer:
    """Gathers a burst of uevents into one reconcile: the first event opens a window that
    does not slide, so a steady trickle cannot postpone the reconcile forever."""

    def __init__(self, window: float = 0.2, *, clock: Clock = time.monotonic) -> None:
        self.window, self.clock = max(0.0, window), clock
        self._batch = Batch()
        self._opened_at: Optional[float] = None

    def add(self, batch: UeventBatch) -> None:
        """A driver (un)registering or an overflow maps to no function: a full batch."""
        affected = frozenset(e.bdf for e in batch.events if e.bdf is not None)
        full = batch.overflowed or any(e.bdf is None and e.relevant for e in batch.events)
        if affected or full:
            self._batch = Batch(self._batch.affected | affected, self._batch.full or full)
            if self._opened_at is None:
                self._opened_at = self.clock()

    @property
    def pending(self) -> bool:
        return self._opened_at is not None

    def due_at(self) -> Optional[float]:
        return None if self._opened_at is None else self._opened_at + self.window

    def take_if_due(self) -> Optional[Batch]:
        due = self.due_at()
        return self.take() if due is not None and self.clock() >= due else None

    def take(self) -> Batch:
        """The batch now, window closed or not (a resync absorbs pending events)."""
        batch, self._batch, self._opened_at = self._batch, Batch(), None
        return batch


@dataclass
class _Retry:
    failures: int = 0
    at: Optional[float] = None  # None: parked, no timer
    reason: Optional[str] = None
    cause: Reason = Reason.BACKOFF  # the last failure's kind, kept while it waits


class Backoff:
    """Per-function retry delays, doubling from ``initial`` to ``cap``, reset on success, so
    a failing function (whose own attempts make uevents) is never retried in a hot loop."""

    def __init__(
        self, initial: float = 1.0, cap: float = 300.0, *, clock: Clock = time.monotonic
    ) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError(f"backoff needs 0 < initial <= cap, got {initial} and {cap}")
        self.initial, self.cap, self.clock = initial, cap, clock
        self._retries: dict[str, _Retry] = {}

    def delay_after(self, failures: int) -> float:
        """The wait after the ``failures``-th failure in a row (1-based)."""
        return float(min(self.initial * (2.0 ** min(max(failures, 1) - 1, 64)), self.cap))

    def failed(
        self, key: str, reason: Optional[str] = None, cause: Reason = Reason.BACKOFF
    ) -> float:
        failures = self.failures(key) + 1
        delay = self.delay_after(failures)
        self._retries[key] = _Retry(failures, self.clock() + delay, reason, cause)
        return delay

    def get(self, key: str) -> _Retry:
        return self._retries.get(key, _Retry())

    def failures(self, key: str) -> int:
        return self.get(key).failures

    def reason(self, key: str) -> Optional[str]:
        return self.get(key).reason

    def succeeded(self, key: str) -> None:
        self._retries.pop(key, None)

    def park(self, key: str) -> None:
        """Keep the count, set no timer: due but not attempted (the next event or resync is)."""
        self.get(key).at = None

    def keys(self) -> frozenset[str]:
        return frozenset(self._retries)

    def retry_now(self) -> None:
        """Make every waiting key due (SIGHUP: "I fixed it, try again")."""
        now = self.clock()
        for retry in self._retries.values():
            retry.at = None if retry.at is None else min(retry.at, now)

    def waiting(self) -> frozenset[str]:
        """Keys whose retry has not come: not to be written yet."""
        return frozenset(k for k, r in self._retries.items() if r.at is not None) - self.due()

    def due(self) -> frozenset[str]:
        now = self.clock()
        return frozenset(k for k, r in self._retries.items() if r.at is not None and r.at <= now)

    def next_retry_at(self) -> Optional[float]:
        return min((r.at for r in self._retries.values() if r.at is not None), default=None)


class FlapGuard:
    """More than ``limit`` successful moves of one function within ``window`` seconds is
    something else binding it back (a udev rule, another agent): a failure for the backoff."""

    def __init__(
        self, limit: int = 5, window: float = 60.0, *, clock: Clock = time.monotonic
    ) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._moves: dict[str, list[float]] = {}

    def moved(self, key: str) -> bool:
        """Record a move; True when ``key`` is flapping."""
        now = self.clock()
        moves = [t for t in self._moves.get(key, ()) if t > now - self.window] + [now]
        self._moves[key] = moves[-(self.limit + 1) :]
        return len(moves) > self.limit

    def forget(self, key: str) -> None:
        self._moves.pop(key, None)


@dataclass(frozen=True)
class LoopSettings:
    """Timing (seconds); ``stall_after``: the longest reconcile before ``/healthz`` fails."""

    resync_interval: float = 60.0
    debounce: float = 0.2
    backoff_initial: float = 1.0
    backoff_cap: float = 300.0
    flap_limit: int = 5
    flap_window: float = 60.0
    stall_after: float = 300.0
    config_interval: float = 5.0  # between looks at --node-config (a stat; a read if changed)


def summary(view: NodeView) -> str:
    """One line for systemd's ``STATUS=`` and the log."""
    if view.error is not None:
        return f"not converged: last reconcile failed: {view.error}"
    if not view.reconciled:
        return "starting: first reconcile under way"
    counts = ", ".join(f"{n} {s}" for s, n in view.counts().items() if n) or "no selected function"
    if not view.host.ok:
        names = ", ".join(c.name for c in view.host.failing) or "unknown"
        return f"host not ready ({names}); {counts}"
    return f"{'converged' if view.converged else 'not converged'}: {counts}"


class ReconcileLoop:
    """``view`` and :meth:`alive` are what the HTTP threads read (each a single reference)."""

    def __init__(
        self,
        reconcile: Callable[[ReconcileRequest], ReconcileOutcome],
        *,
        source: Optional[DatagramUeventSource],
        settings: LoopSettings = LoopSettings(),
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        waiter: Optional[Waiter] = None,
        notifier: Optional[Notifier] = None,
        ready_file: Optional[ReadyFile] = None,
        node_files: Sequence[NodeFile] = (),
        metrics: Optional[DaemonMetrics] = None,
        on_exit: Callable[[], None] = lambda: None,
        reload: Optional[Callable[[], bool]] = None,
    ) -> None:
        self.reconciler, self.source, self.settings = reconcile, source, settings
        self.clock, self.wall_clock = clock, wall_clock
        self.waiter: Waiter = waiter or PollWaiter()
        self.notifier = notifier or Notifier(None)
        self.ready_file, self.metrics, self.on_exit = ready_file, metrics, on_exit
        self.files = [*([ready_file] if ready_file is not None else []), *node_files]
        self.debouncer = Debouncer(settings.debounce, clock=clock)
        self.backoff = Backoff(settings.backoff_initial, settings.backoff_cap, clock=clock)
        self.flaps = FlapGuard(settings.flap_limit, settings.flap_window, clock=clock)
        self.view = NodeView()
        self.reconciles = 0
        self.stop_signal: Optional[int] = None
        self._stop = self._resync = self._ready_sent = self._converged = False
        self._progress = True  # the last reconcile finished, or failed for a known reason
        self._doorbell, self._ring_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._alive_until = float("-inf")
        self._next_resync = clock()
        self.reload = reload  # re-reads the node's configuration; True when it changed
        self._next_reload = None if reload is None else clock() + settings.config_interval
        self._next_watchdog = None if self.notifier.watchdog_interval is None else clock()
        self._host_logged: Optional[frozenset[str]] = None
        self._spurious = 0

    def stop_requested(self) -> bool:
        """A method, not a property: a signal handler may flip it between two reads."""
        return self._stop

    def request_stop(self, signum: Optional[int] = None) -> None:
        if not self._stop:
            self.stop_signal, self._stop = signum, True
        self._ring()

    def request_resync(self) -> None:
        self._resync = True
        self._ring()

    def _ring(self) -> None:  # a signal just before ``poll`` leaves its byte in the pipe
        with contextlib.suppress(BlockingIOError):  # the pipe is full: a wakeup is pending
            os.write(self._ring_fd, b"\0")

    def install_signal_handlers(self) -> Callable[[], None]:
        """SIGTERM/SIGINT: stop; SIGHUP: resync. Returns a function restoring the old ones."""

        def on_signal(signum: int, _frame: Optional[FrameType]) -> None:
            if signum == signal.SIGHUP:
                self.request_resync()
            else:
                self.request_stop(signum)

        restore = contextlib.ExitStack()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            restore.callback(signal.signal, sig, signal.signal(sig, on_signal))
        return restore.close

    def close(self) -> None:
        for fd in (self._doorbell, self._ring_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def beat(self, back_within: float) -> None:
        """The loop promises to beat again within ``back_within`` seconds."""
        self._alive_until = self.clock() + max(0.0, back_within)

    def alive(self) -> bool:
        """The loop kept its last promise and its last reconcile made progress: true while
        idle, false once it is wedged or starved (out of descriptors)."""
        return self._progress and self.clock() <= self._alive_until

    def run(self) -> int:
        self.start()
        while self.step():
            pass
        return self.finish()

    def start(self) -> None:
        for stale in self.files:  # a killed daemon may have left them behind
            stale.remove()
        self.notifier.status(summary(self.view))
        self._ping_watchdog()
        if self.source is None:
            log.info("no uevent source: resync only", interval=self.settings.resync_interval)
        self._reconcile(None)

    def step(self) -> bool:
        """Wait for the next thing to do and do it; False once a stop was requested."""
        if self.stop_requested():
            return False
        owed = (
            self._next_resync,
            self.debouncer.due_at(),
            self.backoff.next_retry_at(),
            self._next_reload,
        )
        due = min(t for t in (*owed, self._next_watchdog) if t is not None)
        timeout = max(0.0, due - self.clock())
        self.beat(timeout + HEARTBEAT_SLACK)
        source = self.source
        fds = [self._doorbell] if source is None else [self._doorbell, source.fileno()]
        ready = self.waiter.wait(fds, timeout)
        if self._doorbell in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._doorbell, 512):
                    pass
        if self.stop_requested():
            return False
        if source is not None and source.fileno() in ready:
            self._read_events(source)
        self._act()
        self._ping_watchdog()
        return True

    def finish(self) -> int:
        """STOPPING=1, remove the ready file, run ``on_exit``; the exit code."""
        signum = self.stop_signal
        reason = signal.Signals(signum).name if signum is not None else "stop requested"
        log.info("stopping", reason=reason)
        self.notifier.stopping(f"stopping ({reason})")
        for told in self.files:
            told.remove()
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

    def _read_events(self, source: DatagramUeventSource) -> None:
        batch = source.read_pending()
        if batch.events and self.metrics is not None:
            self.metrics.observe_uevents(batch.events)
        for event in batch.events:
            log.debug("uevent", **asdict(event))
        self.debouncer.add(batch)
        self._spurious = self._spurious + 1 if batch.datagrams == 0 else 0
        if batch.closed or self._spurious >= _SPURIOUS_WAKEUPS:
            log.warning(
                "uevent source lost: the node is re-read at each resync only",
                interval=self.settings.resync_interval,
            )
            source.close()
            self.source = None
            self.debouncer.add(UeventBatch(overflowed=True))  # events may be lost: resync

    def _act(self) -> None:
        resync, self._resync = self._resync, False
        reloaded = self._reload(force=resync)
        if resync:
            log.info("resync requested (SIGHUP): failed functions are retried now")
            self.backoff.retry_now()
        batch = self.debouncer.take_if_due() or Batch()
        if resync or reloaded or batch.full or self.clock() >= self._next_resync:
            self.debouncer.take()  # a full reconcile covers whatever was pending
            self._reconcile(None)
        elif affected := batch.affected | self.backoff.due():
            self._reconcile(affected)

    def _reload(self, *, force: bool) -> bool:
        """Look at the node's configuration when due (or ``force``: SIGHUP); True if changed."""
        due = self._next_reload
        if self.reload is None or due is None or not (force or self.clock() >= due):
            return False
        self._next_reload = self.clock() + self.settings.config_interval
        return self.reload()

    def _reconcile(self, affected: Optional[frozenset[str]]) -> None:
        full = affected is None
        request = ReconcileRequest(affected, self.backoff.waiting(), self.stop_requested)
        self.beat(self.settings.stall_after)
        self._ping_watchdog()
        started = self.clock()
        outcome: Optional[ReconcileOutcome] = None
        progress = False  # set once at the end: the HTTP thread reads it meanwhile
        try:
            outcome = self.reconciler(request)
            progress = True
        except VfioManagerError as exc:
            self.view = replace(self.view, error=exc.message or "unknown error")
            progress = not _caused_by_os_error(exc)
            log.error("reconcile failed", error=exc.message, remedy=exc.remedy)
        except Exception as exc:  # a daemon reports a bug and keeps serving
            self.view = replace(self.view, error=f"{type(exc).__name__}: {exc}")
            log.error(
                "reconcile crashed (a bug: please report it)", error=self.view.error, exc_info=True
            )
        self._progress = progress
        duration = self.clock() - started
        self.reconciles += 1
        if full:
            self._next_resync = self.clock() + self.settings.resync_interval
        if outcome is not None:
            self.view = self._merge(request, outcome)
        view = self.view
        for told in self.files:
            told.show(view)
        if self.metrics is not None:
            self.metrics.observe_reconcile(
                view, outcome, full=full, duration=duration, finished_at=self.wall_clock()
            )
        self._log_host(view)
        line = summary(view)
        if view.converged and not self._converged:
            log.info("converged", summary=line)
        self._converged = view.converged
        if not self._ready_sent:  # whatever the outcome: units ordered after us wait no longer
            self._ready_sent = True
            self.notifier.ready(line)
        else:
            self.notifier.status(line)
        scope = "full" if full else "partial"
        log.debug("reconciled", scope=scope, duration=round(duration, 4), summary=line)

    def _merge(self, request: ReconcileRequest, outcome: ReconcileOutcome) -> NodeView:
        """Backoff and flap bookkeeping, then the view with waiting functions shown failed."""
        flapping = set()
        for t in outcome.transitions:
            changed = t.result is Result.CHANGED
            if changed and self.flaps.moved(t.bdf):
                flapping.add(t.bdf)
            (log.info if changed else log.warning)(
                "transition",
                bdf=t.bdf,
                direction=t.direction.value,
                outcome=t.result.value,
                reason=t.reason,
            )
        states = tuple(self._account(s, request, s.bdf in flapping) for s in outcome.functions)
        looked_at = self.backoff.keys() if request.affected is None else request.affected
        for gone in looked_at - {s.bdf for s in states}:
            self.backoff.succeeded(gone)
            self.flaps.forget(gone)
        return self.view.merge(request, replace(outcome, functions=states))

    def _account(
        self, function: FunctionState, request: ReconcileRequest, flapping: bool
    ) -> FunctionState:
        bdf = function.bdf
        if bdf in request.skip:
            if function.state is not State.PENDING:
                return function
            retry = self.backoff.get(bdf)
            wait = max(0.0, retry.at - self.clock()) if retry.at is not None else 0.0
            attempt = f"attempt {retry.failures + 1}"
            remedy = f"retried automatically in {wait:.0f}s ({attempt}); a SIGHUP retries now"
            return replace(
                function, state=State.FAILED, reason=retry.reason, remedy=remedy, cause=retry.cause
            )
        if flapping:
            reason = (
                f"moved back to the host more than {self.flaps.limit} times within "
                f"{self.flaps.window:g}s: something else binds it (a udev rule, another agent)"
            )
            delay = self.backoff.failed(bdf, reason, Reason.FLAPPING)
            log.error("function flapping", bdf=bdf, reason=reason, retry_in=delay)
            remedy = "find and stop what rebinds it"
            return replace(
                function, state=State.FAILED, reason=reason, remedy=remedy, cause=Reason.FLAPPING
            )
        if function.state is State.FAILED:
            delay = self.backoff.failed(bdf, function.reason, function.cause)
            log.error(
                "function failed",
                bdf=bdf,
                reason=function.reason,
                remedy=function.remedy,
                attempt=self.backoff.failures(bdf),
                retry_in=delay,
            )
        elif function.state.accepted:
            self.backoff.succeeded(bdf)
        else:
            self.backoff.park(bdf)
        return function

    def _log_host(self, view: NodeView) -> None:
        """The host's failing checks, once per distinct set; once more when it recovers."""
        failing = frozenset() if view.host.ok else frozenset(c.name for c in view.host.failing)
        if view.host.ok and self._host_logged:
            log.info("host ready again")
        elif not view.host.ok and failing != self._host_logged:
            for check in view.host.failing:
                log.error(
                    "host not ready: nothing is written until it is (re-checked at each resync)",
                    check=check.name,
                    detail=check.detail,
                    remedy=check.remedy,
                )
        self._host_logged = failing

    def _ping_watchdog(self) -> None:
        """WATCHDOG=1 when due, unless the last reconcile made no progress (systemd restarts)."""
        now, interval, due = self.clock(), self.notifier.watchdog_interval, self._next_watchdog
        if interval is not None and due is not None and now >= due:
            if self._progress:
                self.notifier.watchdog()
            self._next_watchdog = now + interval


def _caused_by_os_error(exc: BaseException) -> bool:
    """An OSError in ``exc``'s chain: the process could not do its I/O (EMFILE, ENOMEM, ...)."""
    seen: Optional[BaseException] = exc
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__cause__ or seen.__context__
    return seen is not None

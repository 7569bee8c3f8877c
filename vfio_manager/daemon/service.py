"""``vfio-manager daemon``: the pieces of :mod:`vfio_manager.daemon` put together, in order.

Why a module of its own: the CLI turns options into :class:`DaemonOptions`; everything the
daemon owns for its lifetime (its presence lock, the signal handlers, the uevent socket, the
HTTP server, the loop) is acquired here in an order that fails early and released in the
reverse order whatever happens. Tests build the same daemon with an injected uevent source,
clock, waiter and environment (:func:`build_daemon`), so what they drive is what runs.

Start order: the ``--listen`` address is parsed (a usage error before anything else), the
presence lock is taken (a second daemon waits ``--lock-timeout`` for the first, then refuses,
naming it), the HTTP server binds, the uevent socket opens (before the first reconcile, so
no event of that window is lost), signal handlers go in, then the loop starts.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from vfio_manager import __version__
from vfio_manager.daemon.board import StatusBoard
from vfio_manager.daemon.loop import (
    DEFAULT_RESYNC_INTERVAL,
    LoopSettings,
    MetricsSink,
    ReconcileLoop,
    Waiter,
    Wakeup,
)
from vfio_manager.daemon.notify import Notifier
from vfio_manager.daemon.onexit import OnExit, on_exit_action
from vfio_manager.daemon.readiness import ReadyFile, default_ready_path
from vfio_manager.daemon.reconciler import PipelineReconciler
from vfio_manager.daemon.uevents import UeventSource, open_uevent_source
from vfio_manager.log import get_logger
from vfio_manager.pipeline.node import Node
from vfio_manager.pipeline.selection import Selector
from vfio_manager.safety.intents import IntentStore
from vfio_manager.safety.lock import DaemonPresence

if TYPE_CHECKING:
    from vfio_manager.daemon.http import HealthServer
    from vfio_manager.daemon.metrics import DaemonMetrics
    from vfio_manager.host.modules import Runner

log = get_logger("vfio_manager.daemon.service")


@dataclass(frozen=True)
class DaemonOptions:
    """The daemon's command line (see docs/daemon.md); BDFs in ``exclude`` are canonical."""

    selector: Selector = field(default_factory=Selector)
    exclude: tuple[str, ...] = ()
    resync_interval: float = DEFAULT_RESYNC_INTERVAL
    ready_file: Optional[str] = None  # default <state-dir>/ready
    listen: Optional[str] = None
    on_exit: OnExit = OnExit.KEEP
    load_modules: bool = True


@dataclass
class Daemon:
    """A daemon ready to run: :meth:`run` returns the exit code and releases everything."""

    loop: ReconcileLoop
    reconciler: PipelineReconciler
    presence: DaemonPresence
    server: Optional[HealthServer] = None
    metrics: Optional[DaemonMetrics] = None
    closers: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def run(self) -> int:
        with self.closers:
            return self.loop.run()

    def close(self) -> None:
        self.closers.close()


def _kernel_uevents(options: DaemonOptions) -> Optional[UeventSource]:
    return open_uevent_source(options.resync_interval)


def build_daemon(
    node: Node,
    options: DaemonOptions,
    *,
    open_source: Callable[[DaemonOptions], Optional[UeventSource]] = _kernel_uevents,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    waiter: Optional[Waiter] = None,
    env: Optional[Mapping[str, str]] = None,
    runner: Optional[Runner] = None,
    signals: bool = True,
    process_metrics: bool = True,
    settings: Optional[LoopSettings] = None,
) -> Daemon:
    """Acquire what the daemon holds, in the order of the module docstring.

    ``signals``: install the SIGTERM/SIGINT/SIGHUP handlers (main thread only; tests that
    drive the loop themselves use ``daemon.loop.wakeup``). ``settings`` overrides the loop's
    timing (tests); by default only the resync interval comes from ``options``.
    """
    address = None
    if options.listen is not None:
        from vfio_manager.daemon.http import parse_listen

        address = parse_listen(options.listen)
    closers = contextlib.ExitStack()
    try:
        presence = DaemonPresence(node.state_dir, timeout=node.lock_timeout)
        presence.acquire()
        closers.callback(presence.release)
        board = StatusBoard(clock=clock)
        metrics: Optional[DaemonMetrics] = None
        server: Optional[HealthServer] = None
        if address is not None:
            from vfio_manager.daemon.http import HealthServer
            from vfio_manager.daemon.metrics import DaemonMetrics

            metrics = DaemonMetrics(version=__version__, process=process_metrics)
            server = HealthServer(address, board, metrics)
            closers.callback(server.stop)
        source = open_source(options)
        if source is not None:
            closers.callback(source.close)
        wakeup = Wakeup()
        closers.callback(wakeup.close)
        reconciler = PipelineReconciler(
            node,
            options.selector,
            exclude=options.exclude,
            load_modules=options.load_modules,
            runner=runner,
            intents=IntentStore(node.state_dir, wall_clock=wall_clock),
        )
        loop = ReconcileLoop(
            reconciler,
            source=source,
            wakeup=wakeup,
            settings=settings or LoopSettings(resync_interval=options.resync_interval),
            clock=clock,
            wall_clock=wall_clock,
            waiter=waiter,
            notifier=Notifier.from_environment(os.environ if env is None else env),
            ready_file=ReadyFile(
                options.ready_file or default_ready_path(node.state_dir), wall_clock=wall_clock
            ),
            metrics=_sink(metrics),
            board=board,
            on_exit=on_exit_action(
                options.on_exit, node, options.selector, exclude=options.exclude
            ),
        )
        if server is not None:
            server.start()
        if signals:
            closers.callback(wakeup.install_signal_handlers())
    except BaseException:
        closers.close()
        raise
    log.info(
        "daemon starting",
        pid=os.getpid(),
        selection=options.selector.describe(),
        exclude=list(options.exclude),
        on_exit=options.on_exit.value,
        resync_interval=options.resync_interval,
        ready_file=loop.ready_file.path if loop.ready_file is not None else None,
        listen=f"{server.address[0]}:{server.address[1]}" if server is not None else None,
        uevents=source is not None,
        state_dir=node.state_dir,
    )
    return Daemon(loop, reconciler, presence, server, metrics, closers)


def _sink(metrics: Optional[DaemonMetrics]) -> Optional[MetricsSink]:
    return metrics


def run_daemon(node: Node, options: DaemonOptions) -> int:
    """Build the daemon, run it until SIGTERM/SIGINT, release everything; the exit code."""
    return build_daemon(node, options).run()


__all__ = ["Daemon", "DaemonOptions", "build_daemon", "run_daemon"]

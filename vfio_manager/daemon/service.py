"""``vfio-manager daemon``: what it holds, acquired in an order that fails early (the
``--listen`` address, the presence lock, the uevent socket before the first reconcile, the
HTTP server, the signal handlers) and released in reverse whatever happens."""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from vfio_manager.daemon.health import (
    DaemonMetrics,
    HealthServer,
    NfdFeatures,
    Notifier,
    ReadyFile,
    ValidationFile,
    default_ready_path,
    parse_listen,
)
from vfio_manager.daemon.loop import LoopSettings, ReconcileLoop
from vfio_manager.daemon.nodeconfig import NodeConfig
from vfio_manager.daemon.reconciler import OnExit, PipelineReconciler, on_exit_action
from vfio_manager.kernel.drivers import Direction
from vfio_manager.kernel.uevents import DatagramUeventSource, Waiter, open_kernel_uevents
from vfio_manager.log import get_logger
from vfio_manager.pipeline.node import Node
from vfio_manager.pipeline.selection import Selector
from vfio_manager.pipeline.transition import TransitionRequest
from vfio_manager.safety.lock import DaemonPresence

if TYPE_CHECKING:
    from vfio_manager.host.modules import Runner

log = get_logger("vfio_manager.daemon.service")


@dataclass(frozen=True)
class DaemonOptions:
    """The daemon's command line (see docs/daemon.md); BDFs in ``exclude`` are canonical."""

    selector: Selector = field(default_factory=Selector)
    resync_interval: float = LoopSettings.resync_interval
    ready_file: Optional[str] = None  # default <state-dir>/ready
    nfd_features_file: Optional[str] = None
    validation_file: Optional[str] = None
    listen: Optional[str] = None
    on_exit: OnExit = OnExit.KEEP
    load_modules: bool = True
    node_config: Optional[str] = None  # a file, or a directory of <node name> and default
    node_name: Optional[str] = None  # default: the host name


@dataclass
class Daemon:
    """A daemon ready to run: :meth:`run` returns the exit code and releases everything."""

    loop: ReconcileLoop
    server: Optional[HealthServer]
    closers: contextlib.ExitStack

    def run(self) -> int:
        with self.closers:
            return self.loop.run()

    def close(self) -> None:
        self.closers.close()


def open_uevent_source(resync_interval: float) -> Optional[DatagramUeventSource]:
    """The kernel's uevents, or ``None`` after saying once that the daemon relies on resync."""
    try:
        return open_kernel_uevents()
    except OSError as exc:
        log.warning(
            "uevents unavailable: the node is re-read at each resync only",
            error=exc.strerror,
            errno=errno_mod.errorcode.get(exc.errno or 0),
            resync_interval=resync_interval,
            remedy="allow AF_NETLINK sockets (a seccomp or AppArmor profile may block them) and "
            "run without a user namespace, or lower --resync-interval",
        )
        return None


def build_daemon(
    node: Node,
    options: DaemonOptions,
    *,
    open_source: Callable[[DaemonOptions], Optional[DatagramUeventSource]] = lambda options: (
        open_uevent_source(options.resync_interval)
    ),
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    waiter: Optional[Waiter] = None,
    env: Optional[Mapping[str, str]] = None,
    runner: Optional[Runner] = None,
    signals: bool = True,
    process_metrics: bool = True,
    settings: Optional[LoopSettings] = None,
) -> Daemon:
    """Acquire what the daemon holds; tests inject the rest, drive the loop themselves
    (``signals=False``) and may override its timing."""
    address = parse_listen(options.listen) if options.listen is not None else None
    config = None
    if options.node_config is not None:
        node_name = options.node_name or socket.gethostname()
        config = NodeConfig(options.node_config, node_name, options.selector)

    def selection() -> Selector:
        return config.selector if config is not None else options.selector

    with contextlib.ExitStack() as acquired:  # released at once if a later step fails
        acquired.enter_context(DaemonPresence(node.state_dir, timeout=node.lock_timeout))
        source = open_source(options)
        if source is not None:
            acquired.callback(source.close)
        metrics = None
        if address is not None:
            metrics = DaemonMetrics(process=process_metrics, wall_clock=wall_clock)
        ready_path = options.ready_file or default_ready_path(node.state_dir)
        ready = ReadyFile(ready_path, wall_clock=wall_clock)
        bind_all = TransitionRequest(
            options.selector, Direction.TO_VFIO, load_modules=options.load_modules, runner=runner
        )
        loop = ReconcileLoop(
            PipelineReconciler(node, bind_all, selection),
            source=source,
            settings=settings or LoopSettings(resync_interval=options.resync_interval),
            clock=clock,
            wall_clock=wall_clock,
            waiter=waiter,
            notifier=Notifier.from_environment(env),
            ready_file=ready,
            node_files=[
                kind(path, wall_clock=wall_clock)
                for kind, path in (
                    (NfdFeatures, options.nfd_features_file),
                    (ValidationFile, options.validation_file),
                )
                if path is not None
            ],
            metrics=metrics,
            on_exit=on_exit_action(options.on_exit, node, selection),
            reload=config.reload if config is not None else None,
        )
        acquired.callback(loop.close)
        server = None
        if address is not None:
            server = HealthServer(address, loop.alive, lambda: loop.view, metrics)
            acquired.callback(server.stop)
        if signals:
            acquired.callback(loop.install_signal_handlers())
        closers = acquired.pop_all()
    log.info(
        "daemon starting",
        pid=os.getpid(),
        selection=selection().describe(),
        node_config=options.node_config,
        on_exit=options.on_exit.value,
        resync_interval=options.resync_interval,
        ready_file=ready.path,
        nfd_features_file=options.nfd_features_file,
        validation_file=options.validation_file,
        listen=f"{server.address[0]}:{server.address[1]}" if server is not None else None,
        uevents=source is not None,
        state_dir=node.state_dir,
    )
    return Daemon(loop, server, closers)

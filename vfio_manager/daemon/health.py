"""What the daemon tells: the ready file, sd_notify, and with ``--listen`` (which alone imports
prometheus-client and http.server) the metrics and ``/healthz`` ``/readyz`` ``/metrics``."""

from __future__ import annotations

import json
import os
import platform
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

from vfio_manager import __version__
from vfio_manager.daemon.reconciler import NodeView, ReconcileOutcome, State
from vfio_manager.errors import UsageError
from vfio_manager.kernel.drivers import Direction
from vfio_manager.kernel.uevents import PCI_ACTIONS, PollWaiter, Uevent
from vfio_manager.log import get_logger
from vfio_manager.pipeline.engine import Result
from vfio_manager.safety.statedir import remove_file, replace_file

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

log = get_logger("vfio_manager.daemon.health")


def default_ready_path(state_dir: str) -> str:
    return os.path.join(state_dir, "ready")


def _json(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


class ReadyFile:
    """Present exactly while the node is converged: a small JSON document written atomically
    (``O_NOFOLLOW``), rewritten only when the counts change. A failure is logged once."""

    REMEDY = (
        "make the ready file's directory exist and be writable, or point --ready-file elsewhere"
    )

    def __init__(self, path: str, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.path, self.wall_clock = os.path.abspath(path), wall_clock
        self._written: Optional[dict[str, int]] = None
        self._since: Optional[float] = None
        self._failing = False

    def update(self, converged: bool, counts: Mapping[str, int]) -> None:
        """Write the file when ``converged`` (if its content changed), remove it otherwise."""
        if not converged:
            self.remove()
            return
        self._since = self.wall_clock() if self._since is None else self._since
        wanted = dict(counts)
        if wanted == self._written and os.path.lexists(self.path):
            return
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._since))
        doc = _json({"converged": True, "since": since, "pid": os.getpid(), "counts": wanted})
        written = self._change("ready file not written", lambda: replace_file(self.path, doc))
        self._written = wanted if written else None

    def remove(self) -> None:
        """Remove the file (no error when absent): the node is not, or no longer, converged."""
        self._since = self._written = None
        self._change("ready file not removed", lambda: remove_file(self.path), missing_ok=True)

    def _change(self, failure: str, change: Callable[[], object], missing_ok: bool = False) -> bool:
        """Run ``change``; False when it failed (logged once, unless missing and ``missing_ok``)."""
        try:
            change()
        except OSError as exc:
            if missing_ok and isinstance(exc, FileNotFoundError):
                return False
            if not self._failing:
                self._failing = True
                log.error(failure, path=self.path, error=exc.strerror, remedy=self.REMEDY)
            return False
        if self._failing:
            self._failing = False
            log.info("ready file works again", path=self.path)
        return True


# -- systemd ---------------------------------------------------------------------------------
def socket_address(value: str) -> Optional[Union[str, bytes]]:
    """``$NOTIFY_SOCKET`` for ``sendto`` (``@name`` abstract, ``/path`` a file), else ``None``."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return value if value.startswith("/") else None


def watchdog_interval(env: Mapping[str, str], pid: Optional[int] = None) -> Optional[float]:
    """Half of ``$WATCHDOG_USEC`` in seconds, as sd_watchdog_enabled; ``None`` when it is off,
    not a positive integer, or ``$WATCHDOG_PID`` names another process."""
    usec, owner = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID")
    if not (usec.isascii() and usec.isdigit()) or int(usec) == 0:
        return None
    me = os.getpid() if pid is None else pid
    if owner is not None and not (owner.isascii() and owner.isdigit() and int(owner) == me):
        return None
    return int(usec) / 2 / 1_000_000


class Notifier:
    """sd_notify to ``$NOTIFY_SOCKET`` (``None``: a no-op), one ``AF_UNIX`` datagram of
    ``KEY=VALUE`` lines per message. Each method says whether the message went out."""

    def __init__(self, notify_socket: Optional[str], watchdog: Optional[float] = None) -> None:
        self.notify_socket = notify_socket
        self.address = socket_address(notify_socket) if notify_socket else None
        if notify_socket and self.address is None:
            log.warning("NOTIFY_SOCKET not understood; systemd is not told", value=notify_socket)
        self.watchdog_interval = watchdog if self.address is not None else None
        self._sock: Optional[socket.socket] = None
        self._warned = False

    @classmethod
    def from_environment(cls, env: Optional[Mapping[str, str]] = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        if self.address is None:
            return False
        payload = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning(
                    "sd_notify failed; systemd is not told (said once)",
                    socket=self.notify_socket,
                    error=exc.strerror,
                )
            return False
        return True

    def ready(self, status: Optional[str] = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: Optional[str] = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# -- metrics ---------------------------------------------------------------------------------
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class DaemonMetrics:
    """The series of docs/daemon.md in a registry of their own (plus the process collector)."""

    def __init__(self, *, version: str = __version__, process: bool = True) -> None:
        import prometheus_client as prom
        from prometheus_client.process_collector import ProcessCollector

        disable_created: Callable[[], object] = prom.disable_created_metrics  # untyped there
        disable_created()  # *_created series mean nothing for a node agent
        self.registry = r = prom.CollectorRegistry(auto_describe=True)
        if process:
            ProcessCollector(registry=r)

        def gauge(name: str, text: str, *labels: str) -> Gauge:
            return prom.Gauge(f"vfio_manager_{name}", text, labels, registry=r)

        def counter(name: str, text: str, *labels: str) -> Counter:
            return prom.Counter(f"vfio_manager_{name}", text, labels, registry=r)

        self.functions = gauge("functions", "Selected PCI functions by daemon state.", "state")
        self.node_converged = gauge("node_converged", "1 while the node is converged (ready file).")
        self.transitions = counter(
            "transitions", "Transitions attempted by direction and outcome.", "direction", "outcome"
        )
        self.duration = prom.Histogram(
            "vfio_manager_reconcile_duration_seconds",
            "Time spent in one reconcile (full resync or the functions a uevent batch named).",
            ["scope"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.errors = counter("reconcile_errors", "Reconciles that raised (lock timeout, ...).")
        self.last_success = gauge(
            "last_successful_reconcile_timestamp_seconds",
            "Unix time of the last reconcile that finished with no failed function.",
        )
        self.uevents = counter("uevents", "Kernel uevents acted on, by action.", "action")
        self.host_ready = gauge("host_ready", "1 when the host readiness checks pass.")
        self.host_check_failing = gauge(
            "host_check_failing", "1 while that host check fails, 0 once it passes again.", "check"
        )
        prom.Info("vfio_manager_build", "vfio-manager build information.", registry=r).info(
            {"version": version, "python": platform.python_version()}
        )
        for state in State:
            self.functions.labels(state.value).set(0)
        for direction in Direction:
            for result in (Result.CHANGED, Result.FAILED, Result.REFUSED):
                self.transitions.labels(direction.value, result.value)
        for action in sorted(PCI_ACTIONS):
            self.uevents.labels(action)
        for scope in ("full", "partial"):
            self.duration.labels(scope)
        self._failing_checks: set[str] = set()

    def observe_uevents(self, events: Sequence[Uevent]) -> None:
        for event in events:
            self.uevents.labels(event.action).inc()

    def observe_reconcile(
        self,
        view: NodeView,
        outcome: Optional[ReconcileOutcome],
        *,
        full: bool,
        duration: float,
        finished_at: float,
    ) -> None:
        """One finished reconcile; ``outcome`` is ``None`` when it raised."""
        self.duration.labels("full" if full else "partial").observe(duration)
        if outcome is None:
            self.errors.inc()
        elif all(s.state is not State.FAILED for s in outcome.functions):
            self.last_success.set(finished_at)  # held or pending functions are no failures
        for t in outcome.transitions if outcome is not None else ():
            self.transitions.labels(t.direction.value, t.result.value).inc()
        for state, count in view.counts().items():
            self.functions.labels(state).set(count)
        self.node_converged.set(1 if view.converged else 0)
        self.host_ready.set(1 if view.host.ok else 0)
        failing = {c.name for c in view.host.failing}
        for name in failing | self._failing_checks:
            self.host_check_failing.labels(name).set(1 if name in failing else 0)
        self._failing_checks |= failing

    def render(self) -> tuple[bytes, str]:
        """The ``/metrics`` body and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# -- HTTP ------------------------------------------------------------------------------------
def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT``, ``:PORT`` (all IPv4 addresses) or ``[V6ADDR]:PORT``; UsageError else."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = sep = ""  # an IPv6 address without brackets: refused below
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise UsageError(
            f"--listen {text!r} is not ADDR:PORT",
            remedy="give e.g. 127.0.0.1:9464, :9464 (every IPv4 address) or [::1]:9464",
        )
    return host or "0.0.0.0", int(port)  # noqa: S104 - ':PORT' asks for every address


class HealthServer:
    """Read-only GET endpoints on daemon threads, from construction to :meth:`stop`."""

    def __init__(
        self,
        address: tuple[str, int],
        alive: Callable[[], bool],
        view: Callable[[], NodeView],
        metrics: Optional[DaemonMetrics] = None,
    ) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
            block_on_close = False  # daemon_threads is already True
            timeout = 1.0  # handle_request's own wait; called only once the socket is readable

        class Handler(BaseHTTPRequestHandler):
            server_version, sys_version = "vfio-manager", ""
            timeout = 10.0  # a stalled client cannot hold a thread for long

            def do_HEAD(self) -> None:
                self.do_GET(send_body=False)

            def do_GET(self, *, send_body: bool = True) -> None:
                path = self.path.split("?", 1)[0]
                content_type = "application/json"
                if path == "/healthz":
                    up = alive()
                    code, body = (200 if up else 503), _json({"alive": up})
                elif path == "/readyz":
                    doc = view().to_json(alive())
                    code, body = (200 if doc["ready"] else 503), _json(doc)
                elif path == "/metrics" and metrics is not None:
                    code, (body, content_type) = 200, metrics.render()
                else:
                    code, body = 404, _json({"error": f"no such endpoint: {path}"})
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http request", client=self.client_address[0], request=format % args)

        try:
            self._server = Server(address, Handler)
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {address[0]}:{address[1]}: {exc.strerror}",
                errno=exc.errno,
                remedy="pick a free port and an address of this host for --listen",
            ) from exc
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._serve, name="vfio-manager-http", daemon=True)
        self._thread.start()
        log.info("listening", address=f"{self.address[0]}:{self.address[1]}")

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def _serve(self) -> None:
        """Accept until :meth:`stop`, asleep in ``poll`` while idle (it wakes once an hour)."""
        fds = [self._server.fileno(), self._stop_r]
        while self._stop_r not in (ready := PollWaiter().wait(fds, 3600.0)):
            if ready:
                self._server.handle_request()

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        os.close(self._stop_r)
        os.close(self._stop_w)
        self._server.server_close()

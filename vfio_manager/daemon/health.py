"""What the daemon tells: the ready file, sd_notify, and with ``--listen`` (which alone imports
prometheus-client) the metrics and ``/healthz`` ``/readyz`` ``/metrics``."""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import platform
import resource
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

from vfio_manager import __version__
from vfio_manager.daemon.reconciler import NodeView, ReconcileOutcome, State
from vfio_manager.errors import UsageError
from vfio_manager.kernel.drivers import Direction
from vfio_manager.kernel.uevents import PCI_ACTIONS, Uevent
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


class NodeFile:
    """A file that tells the node's state to others: written atomically (a dot file renamed,
    ``O_NOFOLLOW``) when its content changes, removed when it has nothing to say. A failure
    is logged once; the daemon goes on."""

    WHAT, OPTION = "file", ""

    def __init__(self, path: str, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.path, self.wall_clock = os.path.abspath(path), wall_clock
        self._written: Optional[bytes] = None
        self._failing = False

    def show(self, view: NodeView) -> None:
        """Bring the file in line with ``view`` (after each reconcile)."""
        self.publish(self.content(view))

    def content(self, view: NodeView) -> Optional[bytes]:
        raise NotImplementedError

    def publish(self, data: Optional[bytes]) -> None:
        """Write ``data`` if it is not what the file holds; ``None`` removes the file."""
        if data is None:
            self.remove()
        elif data != self._written or not os.path.lexists(self.path):
            written = self._change("not written", lambda: replace_file(self.path, data))
            self._written = data if written else None

    def remove(self) -> None:
        """Remove the file (no error when absent)."""
        self._written = None
        self._change("not removed", lambda: remove_file(self.path), missing_ok=True)

    def _change(self, failure: str, change: Callable[[], object], missing_ok: bool = False) -> bool:
        """Run ``change``; False when it failed (logged once, unless missing and ``missing_ok``)."""
        try:
            change()
        except OSError as exc:
            if missing_ok and isinstance(exc, FileNotFoundError):
                return False
            if not self._failing:
                self._failing = True
                remedy = f"make the {self.WHAT}'s directory exist and be writable, or point "
                log.error(
                    f"{self.WHAT} {failure}",
                    path=self.path,
                    error=exc.strerror,
                    remedy=f"{remedy}{self.OPTION} elsewhere",
                )
            return False
        if self._failing:
            self._failing = False
            log.info(f"{self.WHAT} works again", path=self.path)
        return True


class ReadyFile(NodeFile):
    """Present exactly while the node is converged: a small JSON document, rewritten only when
    the counts change."""

    WHAT, OPTION = "ready file", "--ready-file"

    def __init__(self, path: str, *, wall_clock: Callable[[], float] = time.time) -> None:
        super().__init__(path, wall_clock=wall_clock)
        self._since: Optional[float] = None

    def content(self, view: NodeView) -> Optional[bytes]:
        return self.document(view.converged, view.counts())

    def update(self, converged: bool, counts: Mapping[str, int]) -> None:
        """Write the file when ``converged`` (if its content changed), remove it otherwise."""
        self.publish(self.document(converged, counts))

    def document(self, converged: bool, counts: Mapping[str, int]) -> Optional[bytes]:
        if not converged:
            return None
        self._since = self.wall_clock() if self._since is None else self._since
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._since))
        return _json({"converged": True, "since": since, "pid": os.getpid(), "counts": counts})

    def remove(self) -> None:
        self._since = None
        super().remove()


NFD_PREFIX = (
    "feature.node.kubernetes.io/vfio-manager."  # NFD's own namespace: no operator reconcile
)
NFD_EXPIRY = 3600.0  # labels of a daemon that died go after an hour; renewed at half of it


class NfdFeatures(NodeFile):
    """A Node Feature Discovery local feature file, so NFD labels the node: converged, host
    ready, functions per state, functions on vfio per product."""

    WHAT, OPTION = "NFD features file", "--nfd-features-file"

    def __init__(self, path: str, *, wall_clock: Callable[[], float] = time.time) -> None:
        super().__init__(path, wall_clock=wall_clock)
        self._labels: Optional[bytes] = None
        self._expires = 0.0

    def content(self, view: NodeView) -> Optional[bytes]:
        flag = {True: "true", False: "false"}
        lines = [f"converged={flag[view.converged]}", f"host-ready={flag[view.host.ok]}"]
        lines += [f"state-{state}={count}" for state, count in view.counts().items()]
        on_vfio = collections.Counter(
            s.product for s in view.functions.values() if s.state is State.CONVERGED
        )
        lines += [f"vfio.{product}={count}" for product, count in sorted(on_vfio.items())]
        labels = "".join(f"{NFD_PREFIX}{line}\n" for line in lines).encode()
        now = self.wall_clock()
        if labels != self._labels or self._expires - now < NFD_EXPIRY / 2:
            self._labels, self._expires = labels, now + NFD_EXPIRY
        expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._expires))
        return f"# +expiry-time={expiry}\n".encode() + self._labels


class ValidationFile(NodeFile):
    """The RBLN operator validator's ``vfio-pci-ready``, in its words: present while the node
    is converged with at least one function on vfio-pci (zero devices fail its check)."""

    WHAT, OPTION = "validation file", "--validation-file"

    def content(self, view: NodeView) -> Optional[bytes]:
        on_vfio = [b for b, s in sorted(view.functions.items()) if s.state is State.CONVERGED]
        if not (view.converged and on_vfio):
            return None
        return f"VFIO_PCI_BOUND_DEVICES={','.join(on_vfio)}\n".encode()


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

    def __init__(
        self,
        *,
        version: str = __version__,
        process: bool = True,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
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
        self.function_state = gauge(
            "function_state",
            "1 for each function's current state (the series goes when the state changes).",
            "bdf",
            "product",
            "state",
            "reason",
        )
        self.journal_records = gauge("journal_records", "Pending journal records.")
        oldest = gauge("journal_oldest_record_seconds", "Age of the oldest pending journal record.")
        oldest.set_function(lambda: 0.0 if self._oldest is None else wall_clock() - self._oldest)
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
        self._series: set[tuple[str, str, str, str]] = set()  # function_state's label sets
        self._refused: set[tuple[str, str]] = set()  # (bdf, direction) refused, not yet counted
        self._oldest: Optional[float] = None
        self._first_seen: dict[str, float] = {}  # records with no readable start time

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
        if outcome is not None:
            self._count(view, outcome)
            self._journal(outcome.journal, finished_at)
        series = {(s.bdf, s.product, s.state.value, s.cause.value) for s in view.functions.values()}
        for gone in self._series - series:
            self.function_state.remove(*gone)
        for labels in series:
            self.function_state.labels(*labels).set(1)
        self._series = series
        for state, count in view.counts().items():
            self.functions.labels(state).set(count)
        self.node_converged.set(1 if view.converged else 0)
        self.host_ready.set(1 if view.host.ok else 0)
        failing = {c.name for c in view.host.failing}
        for name in failing | self._failing_checks:
            self.host_check_failing.labels(name).set(1 if name in failing else 0)
        self._failing_checks |= failing

    def _count(self, view: NodeView, outcome: ReconcileOutcome) -> None:
        """Events, not reconciles: a refusal counts when it starts, not at every resync."""
        refused = set()
        for t in outcome.transitions:
            key = (t.bdf, t.direction.value)
            if t.result is Result.REFUSED:
                refused.add(key)
                if key in self._refused:
                    continue
            self.transitions.labels(t.direction.value, t.result.value).inc()
        looked_at = {s.bdf for s in outcome.functions}
        still = {k for k in self._refused if k[0] not in looked_at and k[0] in view.functions}
        self._refused = refused | still

    def _journal(self, records: Sequence[tuple[str, Optional[float]]], now: float) -> None:
        seen = {bdf: since or self._first_seen.get(bdf, now) for bdf, since in records}
        self._first_seen = {bdf: seen[bdf] for bdf, since in records if since is None}
        self.journal_records.set(len(records))
        self._oldest = min(seen.values(), default=None)

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


MAX_CONNECTIONS = 32  # at once; at the cap, the oldest one still sending its head gives way
HEAD_DEADLINE = 5.0  # seconds from accept for the whole request head, not per read
ANSWER_DEADLINE = 10.0  # seconds more for the client to take the answer
HEAD_LIMIT = 8192
BACKLOG = 128  # connections the kernel queues while the server thread is busy
RESERVED_FDS = 64  # descriptors the server never takes: the reconcile's (lock, journal, writers)


def connection_cap(wanted: int = MAX_CONNECTIONS) -> int:
    """``wanted``, or fewer when RLIMIT_NOFILE leaves less beside the descriptors open now
    and those reserved for the reconcile."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc: count nothing, the reserve still holds
        open_now = 0
    if soft == resource.RLIM_INFINITY:
        return wanted
    return min(wanted, soft - open_now - RESERVED_FDS)


@dataclass
class _Connection:
    sock: socket.socket
    deadline: float
    head: bytes = b""
    out: Optional[bytes] = None  # the answer still to send; None: reading the head
    draining: bool = False  # answered: read until the client closes, so it gets it all


def _answer(code: int, body: bytes, content_type: str, *extra: str, body_too: bool = True) -> bytes:
    from http import HTTPStatus

    lines = [
        f"HTTP/1.1 {code} {HTTPStatus(code).phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body if body_too else b"")


def _error(code: int, message: str, *extra: str) -> bytes:
    return _answer(code, _json({"error": message}), "application/json", *extra)


def _refusal(parts: list[bytes]) -> Optional[bytes]:
    """The error answer to a request line (its words) this server does not serve."""
    if len(parts) == 2:
        return _error(505, "HTTP/0.9 is not supported: send HTTP/1.0 or HTTP/1.1")
    if len(parts) != 3:
        return _error(400, "malformed request line")
    method, _target, version = parts
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        supported = version.startswith(b"HTTP/") and version[5:6].isdigit()
        code, what = (505, "only HTTP/1.0 and 1.1") if supported else (400, "no HTTP version")
        return _error(code, f"{what} in the request line")
    if method not in (b"GET", b"HEAD"):
        return _error(405, "read-only endpoints: GET or HEAD", "Allow: GET, HEAD")
    return None


class HealthServer:
    """Read-only GET endpoints from one thread and one ``poll``, from construction to
    :meth:`stop`; bounded: at most :func:`connection_cap` connections, each with a deadline
    for its head and for its answer, so clients cost neither the reconcile's descriptors nor
    unbounded memory."""

    def __init__(
        self,
        address: tuple[str, int],
        alive: Callable[[], bool],
        view: Callable[[], NodeView],
        metrics: Optional[DaemonMetrics] = None,
        *,
        max_connections: int = MAX_CONNECTIONS,
        head_deadline: float = HEAD_DEADLINE,
    ) -> None:
        self.alive, self.view, self.metrics = alive, view, metrics
        self.head_deadline = head_deadline
        self.cap = connection_cap(max_connections)
        if self.cap < 1:
            raise UsageError(
                "the descriptor limit (RLIMIT_NOFILE) leaves no room for --listen beside the "
                f"{RESERVED_FDS} descriptors kept for the reconcile",
                remedy="raise it (LimitNOFILE= in the unit, ulimit -n) or drop --listen",
            )
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        try:
            self._listener = socket.create_server(address, family=family, backlog=BACKLOG)
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {address[0]}:{address[1]}: {exc.strerror}",
                errno=exc.errno,
                remedy="pick a free port and an address of this host for --listen",
            ) from exc
        self._listener.setblocking(False)
        self._connections: dict[int, _Connection] = {}
        self._accepting = True
        self._resume_at: Optional[float] = None  # accept() failed: descriptors are short
        self._poll = select.poll()
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._poll.register(self._stop_r, select.POLLIN)
        self._poll.register(self._listener, select.POLLIN)
        self._thread = threading.Thread(target=self._serve, name="vfio-manager-http", daemon=True)
        self._thread.start()
        log.info("listening", address=f"{self.address[0]}:{self.address[1]}", connections=self.cap)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def connections(self) -> int:
        return len(self._connections)

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)
        for connection in list(self._connections.values()):
            connection.sock.close()
        self._listener.close()

    def _serve(self) -> None:
        """Asleep in ``poll`` while idle; every wakeup first closes what is past its deadline."""
        while True:
            now = time.monotonic()
            for late in [c for c in self._connections.values() if now >= c.deadline]:
                self._expire(late)
            if self._resume_at is not None and now >= self._resume_at:
                self._resume_at = None
                self._listen(True)
            wakeups = [c.deadline for c in self._connections.values()]
            due = min([*wakeups, *([self._resume_at] if self._resume_at else [])], default=None)
            timeout = -1 if due is None else max(0, math.ceil((due - now) * 1000))
            listener = self._listener.fileno()
            ready = sorted(self._poll.poll(timeout), key=lambda e: e[0] == listener)
            for fd, events in ready:  # reads first: a connection with its head in gives no way
                if fd == self._stop_r:
                    return
                if fd == listener:
                    self._accept()
                elif (connection := self._connections.get(fd)) is not None:
                    self._ready(connection, events)

    def _listen(self, on: bool) -> None:
        if on != self._accepting:
            self._accepting = on
            if on:
                self._poll.register(self._listener, select.POLLIN)
            else:
                self._poll.unregister(self._listener)

    def _accept(self) -> None:
        for _ in range(max(1, self.cap // 2)):  # then read: each new one gets a round
            if len(self._connections) >= self.cap:
                waiting = [c for c in self._connections.values() if c.out is None]
                if not waiting:  # every one is being answered: accept again once one closes
                    self._listen(False)
                    return
                self._expire(waiting[0], _error(503, "too many connections; try again"))
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: the reconcile comes first
                log.warning("http: accept failed; paused for 1 s", error=exc.strerror)
                self._listen(False)
                self._resume_at = time.monotonic() + 1.0
                return
            sock.setblocking(False)
            deadline = time.monotonic() + self.head_deadline
            self._connections[sock.fileno()] = _Connection(sock, deadline)
            self._poll.register(sock, select.POLLIN)

    def _ready(self, connection: _Connection, events: int) -> None:
        if connection.out is not None and not connection.draining:
            self._flush(connection)
            return
        try:
            data = connection.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(connection)
        elif not connection.draining:
            connection.head += data
            answer = self._respond(connection.head)
            if answer is None and len(connection.head) > HEAD_LIMIT:
                answer = _error(431, f"the request head is over {HEAD_LIMIT} bytes")
            if answer is not None:
                self._send(connection, answer)

    def _respond(self, head: bytes) -> Optional[bytes]:
        """The answer to a request head, or ``None`` while it is incomplete."""
        line, found, rest = head.partition(b"\n")
        if not found:
            return None
        parts = line.rstrip(b"\r").split()
        refused = _refusal(parts)
        if refused is not None:
            return refused
        if not (rest.startswith((b"\r\n", b"\n")) or b"\n\r\n" in rest or b"\n\n" in rest):
            return None  # the headers are not over yet
        method, target, _version = parts
        path = target.decode("ascii", "replace").split("?", 1)[0]
        log.debug("http request", method=method.decode(), path=path)
        code, body, content_type = self._endpoint(path)
        return _answer(code, body, content_type, body_too=method == b"GET")

    def _endpoint(self, path: str) -> tuple[int, bytes, str]:
        if path == "/healthz":
            up = self.alive()
            return (200 if up else 503), _json({"alive": up}), "application/json"
        if path == "/readyz":
            doc = self.view().to_json(self.alive())
            return (200 if doc["ready"] else 503), _json(doc), "application/json"
        if path == "/metrics" and self.metrics is not None:
            body, content_type = self.metrics.render()
            return 200, body, content_type
        return 404, _json({"error": f"no such endpoint: {path}"}), "application/json"

    def _send(self, connection: _Connection, answer: bytes) -> None:
        connection.out, connection.deadline = answer, time.monotonic() + ANSWER_DEADLINE
        self._flush(connection)

    def _flush(self, connection: _Connection) -> None:
        out = connection.out or b""
        try:
            out = out[connection.sock.send(out) :]
        except BlockingIOError:
            pass
        except OSError:
            self._close(connection)
            return
        connection.out = out
        if out:
            self._poll.modify(connection.sock, select.POLLOUT)
            return
        connection.draining = True
        with contextlib.suppress(OSError):
            connection.sock.shutdown(socket.SHUT_WR)
        self._poll.modify(connection.sock, select.POLLIN)

    def _expire(self, connection: _Connection, answer: Optional[bytes] = None) -> None:
        """Close ``connection`` now; one still sending its head is told why (best effort)."""
        if connection.out is None:
            late = _error(408, f"the request head took over {self.head_deadline:g}s")
            with contextlib.suppress(OSError):
                connection.sock.send(answer or late)
        self._close(connection)

    def _close(self, connection: _Connection) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._poll.unregister(connection.sock)
        self._connections.pop(connection.sock.fileno(), None)
        connection.sock.close()
        if self._resume_at is None:
            self._listen(True)

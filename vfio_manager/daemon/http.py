"""``--listen ADDR:PORT``: ``/healthz``, ``/readyz`` and ``/metrics`` over plain HTTP.

Why these three: Kubernetes probes (a liveness probe on ``/healthz`` restarts a daemon whose
loop is wedged; a readiness probe on ``/readyz`` keeps the pod not-ready, and tells a human
why, while a function is not on vfio-pci), and Prometheus scraping (``/metrics``).

Why the standard library's server: three read-only GET endpoints answered from an
in-memory snapshot need no framework. Requests are served on daemon threads that only read
the :class:`~vfio_manager.daemon.board.StatusBoard`; the loop never waits for them. Each
connection has a short socket timeout, so a client that stalls cannot hold a thread for
long. Request logging goes to the debug log, not to stderr.

``/healthz``  200 ``{"alive": true}`` while the loop keeps its heartbeat, else 503.
``/readyz``   200 when converged, else 503; the body names every function that is not
              converged (state, reason, remedy) and every failing host check.
``/metrics``  Prometheus text format (404 when the server has no metrics).
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Protocol

from vfio_manager.daemon.board import StatusBoard
from vfio_manager.errors import UsageError
from vfio_manager.log import get_logger

log = get_logger("vfio_manager.daemon.http")

_JSON = "application/json"
_CONNECTION_TIMEOUT = 10.0


class MetricsRenderer(Protocol):
    def render(self) -> tuple[bytes, str]: ...


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT``, ``:PORT`` (all IPv4 addresses) or ``[V6ADDR]:PORT``; UsageError else."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address without brackets: refused below
        sep = ""
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise UsageError(
            f"--listen {text!r} is not ADDR:PORT",
            remedy="give e.g. 127.0.0.1:9464, :9464 (every IPv4 address) or [::1]:9464",
        )
    return host or "0.0.0.0", int(port)  # noqa: S104 - ':PORT' asks for every address


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    timeout = 1.0  # handle_request's own wait; it is called only once the socket is readable


class _Server6(_Server):
    address_family = socket.AF_INET6


def _handler(
    board: StatusBoard, metrics: Optional[MetricsRenderer]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "vfio-manager"
        sys_version = ""
        timeout = _CONNECTION_TIMEOUT

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def _answer(self, *, send_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                alive = board.alive()
                self._send(200 if alive else 503, _json({"alive": alive}), _JSON, send_body)
            elif path == "/readyz":
                view = board.view()
                code = 200 if view.converged else 503
                self._send(code, _json(view.to_json()), _JSON, send_body)
            elif path == "/metrics" and metrics is not None:
                body, content_type = metrics.render()
                self._send(200, body, content_type, send_body)
            else:
                self._send(404, _json({"error": f"no such endpoint: {path}"}), _JSON, send_body)

        def _send(self, code: int, body: bytes, content_type: str, send_body: bool) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http request", client=self.client_address[0], request=format % args)

    return Handler


def _json(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


class HealthServer:
    """Binds at construction (so a bad address fails at start), serves after :meth:`start`."""

    def __init__(
        self,
        address: tuple[str, int],
        board: StatusBoard,
        metrics: Optional[MetricsRenderer] = None,
    ) -> None:
        server_class = _Server6 if ":" in address[0] else _Server
        try:
            self._server = server_class(address, _handler(board, metrics))
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {address[0]}:{address[1]}: {exc.strerror}",
                errno=exc.errno,
                remedy="pick a free port and an address of this host for --listen",
            ) from exc
        self._thread: Optional[threading.Thread] = None
        self._stop_r = self._stop_w = -1

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._serve, name="vfio-manager-http", daemon=True)
        self._thread.start()
        log.info("listening", address=f"{self.address[0]}:{self.address[1]}")

    def _serve(self) -> None:
        """Accept until :meth:`stop`; sleeps in ``select`` without a timeout, so idle is idle.

        (``serve_forever`` wakes up every ``poll_interval`` to check for a shutdown request.)
        """
        with selectors.DefaultSelector() as selector:
            selector.register(self._server, selectors.EVENT_READ)
            selector.register(self._stop_r, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj == self._stop_r:
                        return
                    self._server.handle_request()

    def stop(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=5)
            self._thread = None
            os.close(self._stop_r)
            os.close(self._stop_w)
        self._server.server_close()


__all__ = ["HealthServer", "parse_listen"]

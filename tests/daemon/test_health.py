"""What the daemon tells the world: sd_notify messages (real AF_UNIX datagram sockets, path and
abstract name), metrics and the HTTP endpoints (a real server on 127.0.0.1), the ready file."""

from __future__ import annotations

import datetime
import json
import os
import secrets
import select
import socket
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.daemon import nfd
from tests.daemon.fakes import Listener, sample
from tests.support import FakeClock
from vfio_manager.daemon.health import (
    DaemonMetrics,
    HealthServer,
    NfdFeatures,
    Notifier,
    ReadyFile,
    ValidationFile,
    default_ready_path,
    parse_listen,
    watchdog_interval,
)
from vfio_manager.daemon.loop import ReconcileLoop
from vfio_manager.daemon.reconciler import (
    HOST_READY,
    FunctionState,
    HostCheck,
    HostReadiness,
    LastTransition,
    NodeView,
    Reason,
    ReconcileOutcome,
    ReconcileRequest,
    State,
)
from vfio_manager.errors import UsageError
from vfio_manager.kernel.drivers import Direction
from vfio_manager.kernel.uevents import Uevent
from vfio_manager.pipeline.engine import Result


# -- sd_notify -----------------------------------------------------------------------------------
@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
    else:
        address = f"@vfio-manager-test-{os.getpid()}-{secrets.token_hex(4)}"
    listening = Listener(address)
    yield listening
    listening.close()


def test_each_message_arrives_as_one_datagram(listener: Listener) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": listener.env_value})
    assert notifier.enabled
    assert notifier.ready("converged: 2 functions on vfio-pci")
    assert notifier.status("reconciling 0000:03:00.0\nand more")
    assert notifier.watchdog()
    assert notifier.stopping()
    assert listener.message() == ["READY=1", "STATUS=converged: 2 functions on vfio-pci"]
    assert listener.message() == ["STATUS=reconciling 0000:03:00.0 and more"]
    assert listener.message() == ["WATCHDOG=1"]
    assert listener.message() == ["STOPPING=1"]
    notifier.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog_interval is None


def test_a_vanished_socket_is_reported_once_and_never_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vfio_manager.daemon import health

    warnings: list[str] = []
    monkeypatch.setattr(health.log, "warning", lambda event, **kw: warnings.append(event))
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.status("one") is False
    assert notifier.status("two") is False
    assert len(warnings) == 1


@pytest.mark.parametrize("value", ["relative.sock", "@", "vsock:2:1234"])
def test_unsupported_addresses_disable_notify(value: str) -> None:
    assert not Notifier.from_environment({"NOTIFY_SOCKET": value}).enabled


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert watchdog_interval(env) == 15.0
    assert Notifier.from_environment(env).watchdog_interval == 15.0


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "²"}, None),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "43"}, None),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_honours_watchdog_pid(env: dict[str, str], expected: object) -> None:
    assert watchdog_interval(env, pid=42) == expected


# -- metrics ------------------------------------------------------------------------------------
IOMMU_OFF = HostCheck("iommu", "no IOMMU groups", "enable intel_iommu=on and reboot")


def observe(
    metrics: DaemonMetrics,
    functions: tuple[FunctionState, ...],
    *,
    host: HostReadiness = HOST_READY,
    transitions: tuple[LastTransition, ...] = (),
    error: Optional[str] = None,
    full: bool = True,
) -> None:
    """One reconcile as the loop reports it: a raised one has an error and no outcome."""
    outcome = ReconcileOutcome(functions, host, transitions)
    view = NodeView().merge(ReconcileRequest(None), outcome)
    if error is not None:
        view = replace(view, error=error)
    metrics.observe_reconcile(
        view,
        None if error else outcome,
        full=full,
        duration=0.03,
        finished_at=1714564800.0,
    )


def test_metrics_follow_reconciles_and_uevents() -> None:
    metrics = DaemonMetrics(version="9.9.9", process=False)
    text = metrics.render()[0].decode()
    assert sample(text, "vfio_manager_functions", state="failed") == 0
    assert sample(text, "vfio_manager_transitions_total", direction="vfio", outcome="refused") == 0
    assert sample(text, "vfio_manager_uevents_total", action="bind") == 0
    assert sample(text, "vfio_manager_host_ready") == 0
    assert sample(text, "vfio_manager_build_info", version="9.9.9") == 1
    assert "_created" not in text

    metrics.observe_uevents([Uevent("bind", "/devices/x/0000:03:00.0", "pci", "0000:03:00.0")] * 2)
    observe(
        metrics,
        (
            FunctionState("0000:03:00.0", State.CONVERGED),
            FunctionState("0000:04:00.0", State.FAILED, "EINVAL"),
            FunctionState("0000:05:00.0", State.EXCLUDED),
        ),
        transitions=(
            LastTransition("0000:03:00.0", Direction.TO_VFIO, Result.CHANGED),
            LastTransition("0000:04:00.0", Direction.TO_VFIO, Result.FAILED),
        ),
    )
    text = metrics.render()[0].decode()
    assert sample(text, "vfio_manager_uevents_total", action="bind") == 2
    assert sample(text, "vfio_manager_functions", state="converged") == 1
    assert sample(text, "vfio_manager_functions", state="failed") == 1
    assert sample(text, "vfio_manager_functions", state="excluded") == 1
    assert sample(text, "vfio_manager_transitions_total", direction="vfio", outcome="changed") == 1
    assert sample(text, "vfio_manager_transitions_total", direction="vfio", outcome="failed") == 1
    assert sample(text, "vfio_manager_node_converged") == 0
    assert sample(text, "vfio_manager_reconcile_duration_seconds_count", scope="full") == 1
    assert (
        sample(text, "vfio_manager_reconcile_duration_seconds_bucket", scope="full", le="0.05") == 1
    )
    assert (
        sample(text, "vfio_manager_reconcile_duration_seconds_bucket", scope="full", le="0.025")
        == 0
    )
    assert sample(text, "vfio_manager_last_successful_reconcile_timestamp_seconds") == 0, (
        "a reconcile with a failed function is not a success"
    )

    observe(metrics, (FunctionState("0000:03:00.0", State.CONVERGED),))
    text = metrics.render()[0].decode()
    assert sample(text, "vfio_manager_last_successful_reconcile_timestamp_seconds") == 1714564800.0
    assert sample(text, "vfio_manager_node_converged") == 1
    assert sample(text, "vfio_manager_functions", state="failed") == 0


A, B, C = "0000:03:00.0", "0000:04:00.0", "0000:05:00.0"


def test_each_function_has_one_series_its_current_state() -> None:
    metrics = DaemonMetrics(process=False)
    held = FunctionState(B, State.HELD, "PID 812 holds it", None, Reason.IN_USE, "RBLN-CA22")
    observe(
        metrics,
        (
            FunctionState(A, State.CONVERGED, product="RBLN-CA25"),
            held,
            FunctionState(C, State.FAILED, "EINVAL", None, Reason.TRANSITION_FAILED, "1eff-1fff"),
        ),
    )
    text = metrics.render()[0].decode()
    name = "vfio_manager_function_state"
    assert sample(text, name, bdf=A, product="RBLN-CA25", state="converged", reason="none") == 1
    assert sample(text, name, bdf=B, product="RBLN-CA22", state="held", reason="in-use") == 1
    assert sample(text, name, bdf=C, state="failed", reason="transition-failed") == 1
    assert "812" not in text, "a bounded reason, never the detail"

    observe(
        metrics,
        (
            FunctionState(A, State.CONVERGED, product="RBLN-CA25"),
            replace(held, state=State.CONVERGED, cause=Reason.NONE),
        ),
    )
    text = metrics.render()[0].decode()
    assert sample(text, name, bdf=B, state="held") is None, "the old state's series is gone"
    assert sample(text, name, bdf=B, state="converged", reason="none") == 1
    assert sample(text, name, bdf=C) is None, "a function that left the view has no series"
    assert len([line for line in text.splitlines() if line.startswith(name + "{")]) == 2


def test_a_refusal_counts_once_when_it_becomes_refused() -> None:
    """Counters count events: a held function re-planned at every resync is one refusal."""
    metrics = DaemonMetrics(process=False)
    refused = LastTransition(B, Direction.TO_VFIO, Result.REFUSED, "in use")
    held = (FunctionState(B, State.HELD, cause=Reason.IN_USE),)
    for _ in range(3):
        observe(metrics, held, transitions=(refused,))
    text = metrics.render()[0].decode()
    assert sample(text, "vfio_manager_transitions_total", direction="vfio", outcome="refused") == 1
    changed = LastTransition(B, Direction.TO_VFIO, Result.CHANGED)
    observe(metrics, (FunctionState(B, State.CONVERGED),), transitions=(changed,))
    observe(metrics, held, transitions=(refused,))
    failed = LastTransition(C, Direction.TO_VFIO, Result.FAILED, "EINVAL")
    for _ in range(2):  # each failed attempt wrote: each is an event
        observe(metrics, (FunctionState(C, State.FAILED),), transitions=(failed,))
    text = metrics.render()[0].decode()
    assert sample(text, "vfio_manager_transitions_total", direction="vfio", outcome="refused") == 2
    assert sample(text, "vfio_manager_transitions_total", direction="vfio", outcome="failed") == 2


def test_pending_journal_records_and_the_age_of_the_oldest() -> None:
    now = [1714564800.0]
    metrics = DaemonMetrics(process=False, wall_clock=lambda: now[0])
    text = metrics.render()[0].decode()
    assert sample(text, "vfio_manager_journal_records") == 0
    assert sample(text, "vfio_manager_journal_oldest_record_seconds") == 0
    outcome = ReconcileOutcome((), journal=((A, now[0] - 100), (B, None)))
    view = NodeView().merge(ReconcileRequest(None), outcome)
    metrics.observe_reconcile(view, outcome, full=True, duration=0.01, finished_at=now[0])
    now[0] += 20
    text = metrics.render()[0].decode()
    assert sample(text, "vfio_manager_journal_records") == 2
    assert sample(text, "vfio_manager_journal_oldest_record_seconds") == 120, "at scrape time"
    outcome = ReconcileOutcome(())
    metrics.observe_reconcile(view, outcome, full=True, duration=0.01, finished_at=now[0])
    text = metrics.render()[0].decode()
    assert sample(text, "vfio_manager_journal_records") == 0
    assert sample(text, "vfio_manager_journal_oldest_record_seconds") == 0


def test_failing_host_checks_are_exported_and_cleared() -> None:
    metrics = DaemonMetrics(process=False)
    observe(metrics, (), host=HostReadiness(False, (IOMMU_OFF,)))
    text = metrics.render()[0].decode()
    assert sample(text, "vfio_manager_host_ready") == 0
    assert sample(text, "vfio_manager_host_check_failing", check="iommu") == 1
    observe(metrics, ())
    text = metrics.render()[0].decode()
    assert sample(text, "vfio_manager_host_ready") == 1
    assert sample(text, "vfio_manager_host_check_failing", check="iommu") == 0


def test_a_reconcile_that_raised_counts_as_an_error() -> None:
    metrics = DaemonMetrics(process=False)
    observe(metrics, (), error="lock timeout", full=False)
    text = metrics.render()[0].decode()
    assert sample(text, "vfio_manager_reconcile_errors_total") == 1
    assert sample(text, "vfio_manager_reconcile_duration_seconds_count", scope="partial") == 1
    assert sample(text, "vfio_manager_node_converged") == 0


def test_the_process_collector_reports_memory() -> None:
    text = DaemonMetrics().render()[0].decode()
    rss = sample(text, "process_resident_memory_bytes")
    assert rss is not None
    assert rss > 0


# -- HTTP ------------------------------------------------------------------------------------
class Client:
    def __init__(self, server: HealthServer) -> None:
        self.server = server
        host, port = server.address
        self.base = f"http://{host}:{port}"

    def get(self, path: str) -> tuple[int, str, Any]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as answer:  # noqa: S310
                return answer.status, answer.headers["Content-Type"], answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def board(clock: FakeClock) -> Iterator[ReconcileLoop]:
    """What the server reads: the loop's heartbeat and the view it published."""
    loop = ReconcileLoop(lambda request: ReconcileOutcome(()), source=None, clock=clock)
    yield loop
    loop.close()


def serve(board: ReconcileLoop, metrics: Optional[DaemonMetrics] = None) -> HealthServer:
    return HealthServer(("127.0.0.1", 0), board.alive, lambda: board.view, metrics)


@pytest.fixture
def served(board: ReconcileLoop) -> Iterator[tuple[Client, DaemonMetrics]]:
    metrics = DaemonMetrics(process=False)
    server = serve(board, metrics)
    yield Client(server), metrics
    server.stop()


def test_healthz_follows_the_loops_heartbeat(
    served: tuple[Client, DaemonMetrics], board: ReconcileLoop, clock: FakeClock
) -> None:
    client, _ = served
    assert client.get("/healthz")[0] == 503, "no beat yet"
    board.beat(60)
    code, content_type, body = client.get("/healthz")
    assert (code, content_type, json.loads(body)) == (200, "application/json", {"alive": True})
    clock.advance(60)
    assert client.get("/healthz")[0] == 200
    clock.advance(0.5)
    assert client.get("/healthz")[0] == 503, "the loop missed its promise"


HELD = FunctionState(
    "0000:04:00.0",
    State.HELD,
    "it is in use: PID 812 (qemu-system-x86) holds /dev/vfio/12",
    "stop those processes (a VM: shut it down or detach the device)",
    Reason.IN_USE,
)


def test_readyz_names_what_is_not_converged(
    served: tuple[Client, DaemonMetrics], board: ReconcileLoop
) -> None:
    client, _ = served
    board.beat(3600)
    code, _, body = client.get("/readyz")
    assert code == 503
    assert json.loads(body)["reason"] == "the first reconcile has not finished"

    outcome = ReconcileOutcome(
        (
            FunctionState("0000:03:00.0", State.CONVERGED),
            HELD,
            FunctionState("0000:05:00.0", State.INTENT_HOST, "left on the host by intent"),
        ),
        HostReadiness(False, (IOMMU_OFF,)),
    )
    board.view = NodeView().merge(ReconcileRequest(None), outcome)
    code, _, body = client.get("/readyz")
    doc = json.loads(body)
    assert code == 503
    assert doc["ready"] is False
    assert doc["host"] == {"ready": False, "failing": [IOMMU_OFF.to_json()]}
    assert doc["not_converged"] == [
        {
            "bdf": "0000:04:00.0",
            "state": "held",
            "reason": "in-use",
            "remedy": "stop those processes (a VM: shut it down or detach the device)",
        }
    ]
    assert doc["counts"]["intent-host"] == 1

    settled = ReconcileOutcome((FunctionState("0000:03:00.0", State.CONVERGED),))
    board.view = NodeView().merge(ReconcileRequest(None), settled)
    code, _, body = client.get("/readyz")
    assert (code, json.loads(body)["ready"], json.loads(body)["not_converged"]) == (200, True, [])


def test_readyz_means_the_agent_works_and_the_host_can_do_vfio(
    served: tuple[Client, DaemonMetrics], board: ReconcileLoop, clock: FakeClock
) -> None:
    """Not "every function converged": one bad device must not stall a rolling update."""
    client, _ = served
    board.beat(60)
    outcome = ReconcileOutcome((FunctionState("0000:03:00.0", State.CONVERGED), HELD))
    board.view = NodeView().merge(ReconcileRequest(None), outcome)
    code, _, body = client.get("/readyz")
    doc = json.loads(body)
    assert code == 200
    assert (doc["ready"], doc["converged"], doc["alive"]) == (True, False, True)
    assert [f["bdf"] for f in doc["not_converged"]] == ["0000:04:00.0"]
    board.view = replace(board.view, error="another vfio-manager run holds the lock")
    assert client.get("/readyz")[0] == 200, "refused for a known reason: the agent works"
    clock.advance(61)
    code, _, body = client.get("/readyz")
    assert (code, json.loads(body)["alive"]) == (503, False), "a wedged loop is not ready"


def test_readyz_names_no_process_of_another_workload(
    served: tuple[Client, DaemonMetrics], board: ReconcileLoop
) -> None:
    board.beat(60)
    stuck = FunctionState(
        "0000:05:00.0",
        State.FAILED,
        "unbind did not return within 5s; held by PID 4242 (qemu-kvm) holds /dev/vfio/13",
        cause=Reason.STUCK_WRITE,
    )
    outcome = ReconcileOutcome((HELD, stuck))
    board.view = replace(
        NodeView().merge(ReconcileRequest(None), outcome),
        error="another vfio-manager run holds /run/vfio-manager/lock: PID 99 (vfio-manager)",
    )
    client, _ = served
    code, _, body = client.get("/readyz")
    assert code == 200
    for secret in ("812", "4242", "99", "qemu", "/dev/", "vfio-manager)"):
        assert secret not in body, body
    doc = json.loads(body)
    assert [f["reason"] for f in doc["not_converged"]] == ["in-use", "stuck-write"]
    assert "vfio-manager status" in doc["detail"]


def test_metrics_endpoint_serves_the_text_format(served: tuple[Client, DaemonMetrics]) -> None:
    client, metrics = served
    metrics.observe_uevents([Uevent("add", "/devices/x/0000:03:00.0", "pci", "0000:03:00.0")])
    code, content_type, body = client.get("/metrics")
    assert code == 200
    assert content_type.startswith("text/plain")
    assert sample(body, "vfio_manager_uevents_total", action="add") == 1


def test_unknown_paths_are_404(served: tuple[Client, DaemonMetrics]) -> None:
    client, _ = served
    assert client.get("/")[0] == 404
    assert client.get("/metrics/../readyz")[0] == 404


def test_without_metrics_the_endpoint_is_404(board: ReconcileLoop) -> None:
    server = serve(board)
    try:
        assert Client(server).get("/metrics")[0] == 404
    finally:
        server.stop()


def test_a_taken_port_is_a_usage_error(board: ReconcileLoop) -> None:
    first = serve(board)
    try:
        with pytest.raises(UsageError, match="cannot listen"):
            HealthServer(first.address, board.alive, lambda: board.view)
    finally:
        first.stop()


def raw(server: HealthServer, request: bytes, *, timeout: float = 10.0) -> bytes:
    """Send ``request`` as it is and read until the server closes (bounded by ``timeout``)."""
    with socket.create_connection(server.address, timeout=timeout) as client:
        client.sendall(request)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer


def parsed(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *fields = head.decode().split("\r\n")
    version, code, _ = status.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = dict(f.split(": ", 1) for f in fields)
    assert int(headers["Content-Length"]) == len(body) or body == b""
    return int(code), headers, body


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"GET /healthz\r\n", 505),  # HTTP/0.9: a status line all the same
        (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
        (b"POST /healthz HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 405),
        (b"DELETE /metrics HTTP/1.0\r\n\r\n", 405),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # TLS hello
        (b"GET /healthz HTTP/1.1 extra\r\n\r\n", 400),
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
    ],
)
def test_every_error_is_json_with_a_status_line(
    served: tuple[Client, DaemonMetrics], board: ReconcileLoop, request_bytes: bytes, code: int
) -> None:
    server = served[0].server
    got, headers, body = parsed(raw(server, request_bytes))
    assert got == code
    assert headers["Content-Type"] == "application/json"
    assert headers["Connection"] == "close"
    assert set(json.loads(body)) == {"error"}
    if code == 405:
        assert headers["Allow"] == "GET, HEAD"


def test_head_answers_without_a_body(
    served: tuple[Client, DaemonMetrics], board: ReconcileLoop
) -> None:
    board.beat(60)
    code, headers, body = parsed(raw(served[0].server, b"HEAD /healthz HTTP/1.0\r\n\r\n"))
    assert (code, body) == (200, b"")
    assert headers["Content-Length"] == str(len(b'{"alive": true}\n'))


def test_the_whole_request_head_has_one_deadline(board: ReconcileLoop) -> None:
    """One byte now and then does not keep a connection: the deadline is for the whole head,
    not per read. Paced by the answer's own wait, never by sleeping."""
    server = HealthServer(("127.0.0.1", 0), board.alive, lambda: board.view, head_deadline=0.5)
    try:
        with socket.create_connection(server.address, timeout=10) as client:
            started = time.monotonic()
            answer = b""
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x":
                if select.select([client], [], [], 0.1)[0]:  # the server answered (or closed)
                    break
                client.send(bytes([byte]))
            while chunk := client.recv(4096):
                answer += chunk
            took = time.monotonic() - started
    finally:
        server.stop()
    code, _, body = parsed(answer)
    assert code == 408
    assert "error" in json.loads(body)
    assert took < 3, f"cut after {took:.1f}s although a byte came every 0.1 s"


def test_connections_are_capped_and_the_oldest_unfinished_head_gives_way(
    board: ReconcileLoop,
) -> None:
    """Many clients that never finish their request cost at most ``max_connections``
    descriptors, and a prompt request still gets its answer."""
    board.beat(3600)
    server = HealthServer(("127.0.0.1", 0), board.alive, lambda: board.view, max_connections=4)
    slow: list[socket.socket] = []
    try:
        for _ in range(40):
            client = socket.create_connection(server.address, timeout=10)
            client.send(b"G")
            slow.append(client)
        code, _, body = parsed(raw(server, b"GET /healthz HTTP/1.1\r\n\r\n"))
        assert (code, json.loads(body)) == (200, {"alive": True})
        assert server.connections <= 4
        first = slow[0].recv(4096)
        assert parsed(first + b"".join(iter(lambda: slow[0].recv(4096), b"")))[0] == 503
    finally:
        for client in slow:
            client.close()
        server.stop()


def test_a_server_that_stopped_accepting_at_the_cap_accepts_again_once_one_closes(
    board: ReconcileLoop,
) -> None:
    """At the cap with every connection being answered the listener pauses; the close of
    one of them resumes it, or the endpoint would stay deaf for the daemon's life."""
    board.beat(3600)
    server = HealthServer(("127.0.0.1", 0), board.alive, lambda: board.view, max_connections=1)
    try:
        answered = socket.create_connection(server.address, timeout=10)
        answered.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        first = b"".join(iter(lambda: answered.recv(4096), b""))  # the server's half closes
        assert parsed(first)[0] == 200  # the client keeps its half open: still a connection
        with socket.create_connection(server.address, timeout=10) as waiting:
            waiting.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            deadline = time.monotonic() + 10
            while server._accepting and time.monotonic() < deadline:  # the cap is seen
                time.sleep(0.01)
            answered.close()
            second = b"".join(iter(lambda: waiting.recv(4096), b""))
        assert parsed(second)[0] == 200
    finally:
        server.stop()


def test_the_listen_backlog_holds_a_burst_while_the_server_is_busy(tmp_path: Path) -> None:
    """While the server thread is busy (here: a slow view), connections wait in the kernel's
    backlog instead of being refused: it is far above 5."""
    entered, release = threading.Event(), threading.Event()

    def slow_view() -> NodeView:
        entered.set()
        release.wait(30)
        return NodeView()

    server = HealthServer(("127.0.0.1", 0), lambda: True, slow_view)
    burst: list[socket.socket] = []
    try:
        with socket.create_connection(server.address, timeout=10) as first:
            first.sendall(b"GET /readyz HTTP/1.1\r\n\r\n")
            assert entered.wait(10)
            for _ in range(32):
                burst.append(socket.create_connection(server.address, timeout=2))
            release.set()
            assert first.recv(12) == b"HTTP/1.1 503"
    finally:
        release.set()
        for client in burst:
            client.close()
        server.stop()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        (":9464", ("0.0.0.0", 9464)),  # noqa: S104 - the parser under test
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9464", "::1:9464", "host:port", "host:70000", "", "host:-1"])
def test_bad_listen_addresses_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_listen(text)


# -- the ready file ----------------------------------------------------------------------------
COUNTS = {"converged": 2, "pending": 0, "held": 0, "excluded": 1, "failed": 0, "intent-host": 0}


def test_the_ready_file_exists_exactly_while_converged(state_dir: Path) -> None:
    ready = ReadyFile(default_ready_path(str(state_dir)), wall_clock=lambda: 1714564800.0)
    path = state_dir / "ready"
    ready.update(True, COUNTS)
    doc = json.loads(path.read_text())
    assert doc == {
        "converged": True,
        "since": "2024-05-01T12:00:00Z",
        "pid": os.getpid(),
        "counts": COUNTS,
    }
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    ready.update(False, {**COUNTS, "pending": 1})
    assert not path.exists()
    ready.update(True, COUNTS)
    ready.remove()
    assert not path.exists()
    ready.remove()  # absent: no error


def test_the_ready_file_is_rewritten_only_when_counts_change(state_dir: Path) -> None:
    ready = ReadyFile(str(state_dir / "ready"))
    path = state_dir / "ready"
    ready.update(True, COUNTS)
    inode = path.stat().st_ino
    ready.update(True, COUNTS)
    assert path.stat().st_ino == inode, "same content: no write"
    ready.update(True, {**COUNTS, "converged": 3})
    assert path.stat().st_ino != inode, "a rename replaced it"
    assert json.loads(path.read_text())["counts"]["converged"] == 3
    path.unlink()
    ready.update(True, {**COUNTS, "converged": 3})
    assert path.exists(), "removed behind our back: written again"


def test_a_symlink_at_the_ready_path_is_replaced_not_followed(
    state_dir: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (state_dir / "ready").symlink_to(victim)
    ReadyFile(str(state_dir / "ready")).update(True, COUNTS)
    assert victim.read_text() == "precious"
    assert not (state_dir / "ready").is_symlink()
    (state_dir / "ready").unlink()
    (state_dir / "ready").symlink_to(victim)
    ReadyFile(str(state_dir / "ready")).remove()
    assert victim.exists()
    assert not (state_dir / "ready").exists()


def test_an_unwritable_ready_file_is_logged_once_and_never_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vfio_manager.daemon import health

    errors: list[str] = []
    monkeypatch.setattr(health.log, "error", lambda event, **kw: errors.append(event))
    ready = ReadyFile(str(tmp_path / "missing-dir" / "ready"))
    ready.update(True, COUNTS)
    ready.update(True, {**COUNTS, "converged": 5})
    assert errors == ["ready file not written"]


# -- what the cluster reads: NFD's local feature file and the operator's validation file -----
NOW = 1714564800.0
WHEN = datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc)
NFD = "feature.node.kubernetes.io/vfio-manager"


def view_of(*functions: FunctionState, host: HostReadiness = HOST_READY) -> NodeView:
    return NodeView().merge(ReconcileRequest(None), ReconcileOutcome(functions, host))


ON_VFIO = (
    FunctionState(A, State.CONVERGED, product="RBLN-CA25"),
    FunctionState(B, State.CONVERGED, product="RBLN-CA25"),
    FunctionState(C, State.CONVERGED, product="RBLN-CA22-VF"),
)


def test_the_nfd_file_labels_the_node_as_nfd_reads_it(tmp_path: Path) -> None:
    features = NfdFeatures(str(tmp_path / "vfio-manager"), wall_clock=lambda: NOW)
    features.show(view_of(*ON_VFIO, FunctionState("0000:06:00.0", State.EXCLUDED)))
    text = (tmp_path / "vfio-manager").read_text()
    assert text.startswith("# +expiry-time=2024-05-01T13:00:00Z\n"), "the directive first"
    assert nfd.labels(tmp_path, WHEN) == {
        f"{NFD}.converged": "true",
        f"{NFD}.host-ready": "true",
        f"{NFD}.state-converged": "3",
        f"{NFD}.state-pending": "0",
        f"{NFD}.state-held": "0",
        f"{NFD}.state-excluded": "1",
        f"{NFD}.state-failed": "0",
        f"{NFD}.state-intent-host": "0",
        f"{NFD}.vfio.RBLN-CA25": "2",
        f"{NFD}.vfio.RBLN-CA22-VF": "1",
    }
    assert nfd.labels(tmp_path, WHEN + datetime.timedelta(hours=2)) == {}, "a dead daemon's expire"
    assert len(text.encode()) < nfd.MAX_FEATURE_FILE_SIZE


def test_the_nfd_file_follows_the_node_and_is_rewritten_only_when_needed(tmp_path: Path) -> None:
    now = [NOW]
    path = tmp_path / "vfio-manager"
    features = NfdFeatures(str(path), wall_clock=lambda: now[0])
    features.show(view_of(*ON_VFIO))
    inode = path.stat().st_ino
    now[0] += 600
    features.show(view_of(*ON_VFIO))
    assert path.stat().st_ino == inode, "same labels, expiry far: no write"
    held = replace(ON_VFIO[0], state=State.HELD, cause=Reason.IN_USE)
    failing = (IOMMU_OFF,)
    features.show(view_of(held, *ON_VFIO[1:], host=HostReadiness(False, failing)))
    found = nfd.labels(tmp_path, WHEN)
    assert found[f"{NFD}.converged"] == "false"
    assert found[f"{NFD}.host-ready"] == "false"
    assert found[f"{NFD}.state-held"] == "1"
    assert found[f"{NFD}.vfio.RBLN-CA25"] == "1"
    inode = path.stat().st_ino
    now[0] += 1900  # over half of the hour gone: renewed before NFD would drop the labels
    features.show(view_of(held, *ON_VFIO[1:], host=HostReadiness(False, failing)))
    assert path.stat().st_ino != inode
    assert nfd.labels(tmp_path, WHEN + datetime.timedelta(seconds=2500 + 3000)) != {}
    features.remove()
    assert not path.exists()


def test_nfd_never_sees_a_half_written_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written as a dot file, then renamed: at any moment NFD reads all of it or nothing."""
    seen: list[dict[str, str]] = []
    rename = os.replace

    def watching(src: Any, dst: Any, **kwargs: Any) -> None:
        seen.append(nfd.labels(tmp_path, WHEN))
        rename(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", watching)
    NfdFeatures(str(tmp_path / "vfio-manager"), wall_clock=lambda: NOW).show(view_of(*ON_VFIO))
    assert seen == [{}], "the temporary file is a dot file"
    assert nfd.labels(tmp_path, WHEN)[f"{NFD}.state-converged"] == "3"


def test_the_validation_file_is_the_validators_own_line(tmp_path: Path) -> None:
    path = tmp_path / "vfio-pci-ready"
    validation = ValidationFile(str(path))
    validation.show(view_of(*ON_VFIO, FunctionState("0000:06:00.0", State.INTENT_HOST)))
    assert path.read_text() == f"VFIO_PCI_BOUND_DEVICES={A},{B},{C}\n"
    shell = 'test -f "$1" && . "$1" && echo "$VFIO_PCI_BOUND_DEVICES"'
    read = subprocess.run(
        ["sh", "-c", shell, "sh", str(path)], capture_output=True, text=True, check=True
    )
    assert read.stdout == f"{A},{B},{C}\n", "as a shell reads it"
    validation.show(view_of(ON_VFIO[0], replace(ON_VFIO[1], state=State.FAILED)))
    assert not path.exists(), "present only while the node is converged"
    validation.show(view_of(ON_VFIO[0]))
    assert path.read_text() == f"VFIO_PCI_BOUND_DEVICES={A}\n"
    validation.show(view_of(FunctionState(B, State.EXCLUDED)))
    assert not path.exists(), "converged with no function on vfio-pci: zero devices fail"
    validation.show(view_of(ON_VFIO[0]))
    validation.remove()
    assert not path.exists()

"""The daemon's port cannot silence it: `python -m vfio_manager daemon` as a process, under a
low descriptor limit, keeps reconciling while 2,000 slow clients (one header byte every two
seconds, reconnecting when cut) hang on to its port, and its memory stays bounded.

The node is a still picture on disk (:mod:`tests.daemon.ondisk`); a second NPU's sysfs entry
is hidden at start and put back during the attack, so the resync that follows must read sysfs
again (descriptors) to count it. The attack is paced by the notify socket's own wait, never
by sleeping; every wait has a deadline.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.daemon.fakes import Listener
from tests.daemon.ondisk import Roots, materialize
from tests.harness.topologies import npu_node
from vfio_manager.daemon.health import MAX_CONNECTIONS

SLOW_CLIENTS = 2000
NOFILE = 256  # the daemon's RLIMIT_NOFILE: far below 2,000
PACE = 2.0  # seconds between two bytes of one slow client
DEADLINE = 90.0  # for anything the test waits on


def _vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class SlowClients:
    """Clients that each send one header byte per :meth:`round` and reconnect when cut."""

    def __init__(self, port: int, count: int) -> None:
        self.address = ("127.0.0.1", port)
        self.sockets: list[Optional[socket.socket]] = [None] * count
        self.cut = 0

    def round(self) -> None:
        for i, sock in enumerate(self.sockets):
            if sock is None:
                new = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                new.setblocking(False)
                new.connect_ex(self.address)  # EINPROGRESS: the kernel finishes it
                self.sockets[i] = new
                continue
            try:
                sock.send(b"G")
            except BlockingIOError:  # still connecting (the backlog was full): next round
                pass
            except (BrokenPipeError, ConnectionResetError, ConnectionRefusedError):
                sock.close()  # cut by the server: come back
                self.sockets[i] = None
                self.cut += 1

    def close(self) -> None:
        for sock in self.sockets:
            if sock is not None:
                sock.close()


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """The test process holds 2,000 client sockets: raise its own soft limit for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = SLOW_CLIENTS + 512
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _low_limit() -> None:  # in the daemon's child, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def _healthz(port: int) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _listening_port(log: Path) -> int:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("{") and json.loads(line).get("event") == "listening":
                return int(json.loads(line)["address"].rsplit(":", 1)[1])
    raise AssertionError(f"no listening event: {log.read_text()[-2000:]}")


def test_slow_clients_do_not_stop_reconciles_and_memory_stays_bounded(
    tmp_path: Path, many_descriptors: None
) -> None:
    roots, (_first, second) = materialize(
        tmp_path / "machine", lambda k: npu_node(k, count=2, driver="vfio-pci")
    )
    entry = roots.host / "sys" / "bus" / "pci" / "devices" / second
    hidden = entry.with_name(f".{second}")
    entry.rename(hidden)  # not there yet: it appears during the attack
    systemd = Listener(str(tmp_path / "notify.sock"))
    systemd.sock.settimeout(PACE)
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VFIO_MANAGER_", "NOTIFY_"))}
    env |= {"NOTIFY_SOCKET": systemd.env_value, "WATCHDOG_USEC": "4000000"}  # a ping per 2 s
    argv = [
        sys.executable, "-m", "vfio_manager", *Roots.args(roots, state), "--log-format", "json",
        "daemon", "--listen", "127.0.0.1:0", "--resync-interval", "3600",
    ]  # fmt: skip
    with open(log, "w") as stderr:
        daemon = subprocess.Popen(argv, env=env, stderr=stderr, preexec_fn=_low_limit)  # noqa: PLW1509
    clients: Optional[SlowClients] = None
    said: list[list[str]] = []

    def until(wanted: list[str], pace: Optional[SlowClients] = None) -> None:
        """Read notifications until ``wanted``; a second without one is a round of bytes."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            try:
                said.append(systemd.message())
            except TimeoutError:
                if pace is not None:
                    pace.round()
                continue
            if said[-1] == wanted:
                return
        raise AssertionError(f"never said {wanted}: {said[-10:]}\n{log.read_text()[-3000:]}")

    try:
        until(["READY=1", "STATUS=converged: 1 converged"])
        port = _listening_port(log)
        rss_before, fds_before = _vm_rss_kib(daemon.pid), _descriptors(daemon.pid)
        clients = SlowClients(port, SLOW_CLIENTS)
        for _ in range(3):  # connect them all, then a byte or two each
            clients.round()
        pings_before = said.count(["WATCHDOG=1"])
        rss_peak, fds_peak = rss_before, fds_before
        for _ in range(3):  # the attack goes on: bytes every PACE seconds
            until(["WATCHDOG=1"], pace=clients)
            clients.round()
            rss_peak = max(rss_peak, _vm_rss_kib(daemon.pid))
            fds_peak = max(fds_peak, _descriptors(daemon.pid))

        hidden.rename(entry)  # a function appears; SIGHUP: resync now
        daemon.send_signal(signal.SIGHUP)
        until(["STATUS=converged: 2 converged"], pace=clients)
        assert said.count(["WATCHDOG=1"]) - pings_before >= 3, "the watchdog saw progress"
        answers = [_healthz(port) for _ in range(3)]
        assert (200, {"alive": True}) in answers, answers
        rss_peak = max(rss_peak, _vm_rss_kib(daemon.pid))
        fds_peak = max(fds_peak, _descriptors(daemon.pid))
        cut = clients.cut
        clients.close()
        clients = None

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=DEADLINE) == 0, log.read_text()[-3000:]
        until(["STOPPING=1", "STATUS=stopping (SIGTERM)"])
    finally:
        if clients is not None:
            clients.close()
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        systemd.close()
    grown = rss_peak - rss_before
    print(
        f"{SLOW_CLIENTS} slow clients: RSS {rss_before} -> peak {rss_peak} KiB; descriptors "
        f"{fds_before} -> peak {fds_peak}; {cut} connections cut by the server"
    )
    assert fds_peak <= fds_before + MAX_CONNECTIONS + 8, "the server kept to its cap"
    assert grown < 8 * 1024, f"RSS grew {grown} KiB (a thread per connection: ~27 KiB each)"
    assert cut > 0, "the server cut slow clients (head deadline or the cap)"


def test_a_descriptor_limit_that_leaves_no_room_refuses_listen(tmp_path: Path) -> None:
    """Too low a limit for --listen beside the reconcile's reserve: a usage error at start,
    not a daemon whose reconciles starve later."""
    roots, _ = materialize(tmp_path / "machine", lambda k: npu_node(k, count=1))
    argv = [
        sys.executable, "-m", "vfio_manager", *Roots.args(roots, tmp_path / "state"),
        "daemon", "--listen", "127.0.0.1:0",
    ]  # fmt: skip

    def tiny() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("VFIO_MANAGER_", "NOTIFY_"))}
    done = subprocess.run(
        argv,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        preexec_fn=tiny,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "RLIMIT_NOFILE" in done.stderr

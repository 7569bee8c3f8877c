"""`python -m vfio_manager daemon` as a separate process against a node on the real disk.

The node is a converged machine written by the fake kernel to a temporary directory
(:mod:`tests.daemon.ondisk`), so the daemon has nothing to write; what is tested is the
process: systemd's notify protocol on a real datagram socket, the ready file, the HTTP
endpoints on a port the kernel picked, SIGHUP, the presence lock seen from other processes,
SIGTERM. Waits are bounded by the datagrams and the process's exit, never by the clock.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.daemon import nfd
from tests.daemon.fakes import Listener
from tests.daemon.ondisk import Roots, materialize
from tests.harness.topologies import npu_node


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VFIO_MANAGER_", "NOTIFY_"))}
    return {**env, **extra}


def _cli(roots: Roots, state: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "vfio_manager", *roots.args(state), "--log-format", "json", *args]


def _get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def _rss_kib(pid: int) -> Optional[int]:
    """VmRSS of our own child, read-only (for the report, never asserted)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Daemon:
    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.log: list[dict[str, Any]] = []

    def event(self, name: str) -> dict[str, Any]:
        """Read the log until ``name`` (each line is read once; bounded by the process)."""
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if line.startswith("{"):
                doc: dict[str, Any] = json.loads(line)
                self.log.append(doc)
                if doc.get("event") == name:
                    return doc
        raise AssertionError(f"the daemon exited before logging {name!r}: {self.log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=30)


@pytest.fixture
def converged_node(tmp_path: Path) -> tuple[Roots, str]:
    roots, (npu,) = materialize(
        tmp_path / "machine", lambda k: npu_node(k, count=1, driver="vfio-pci")
    )
    return roots, npu


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[Listener]:
    listener = Listener(str(tmp_path / "notify.sock"))
    yield listener
    listener.close()


def test_the_daemon_process_from_ready_to_sigterm(
    tmp_path: Path, converged_node: tuple[Roots, str], systemd: Listener
) -> None:
    roots, _npu = converged_node
    state = tmp_path / "state"
    argv = _cli(roots, state, "daemon", "--listen", "127.0.0.1:0", "--resync-interval", "3600")
    daemon = Daemon(argv, _env(NOTIFY_SOCKET=systemd.env_value))
    try:
        assert systemd.message() == ["STATUS=starting: first reconcile under way"]
        assert systemd.message() == ["READY=1", "STATUS=converged: 1 converged"]
        ready = json.loads((state / "ready").read_text())
        assert ready["converged"] is True
        assert ready["pid"] == daemon.process.pid
        assert ready["counts"]["converged"] == 1

        port = int(daemon.event("listening")["address"].rsplit(":", 1)[1])
        assert port > 0, "port 0 asked the kernel for one; the log names it"
        assert _get(port, "/healthz") == (200, '{"alive": true}\n')
        status, body = _get(port, "/readyz")
        assert status == 200
        assert json.loads(body)["counts"]["converged"] == 1
        status, text = _get(port, "/metrics")
        assert status == 200
        assert 'vfio_manager_functions{state="converged"} 1.0' in text
        assert "vfio_manager_node_converged 1.0" in text
        assert "process_resident_memory_bytes" in text

        probe = "import sys\nfrom vfio_manager.safety.lock import daemon_running\n"
        probe += "print(daemon_running(sys.argv[1]))"
        seen = subprocess.run(
            [sys.executable, "-c", probe, str(state)],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert seen.stdout.strip() == "True", "another process sees the daemon (an flock)"
        second = subprocess.run(
            _cli(roots, state, "--lock-timeout", "0", "daemon"),
            check=False,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert f"PID {daemon.process.pid}" in second.stderr

        daemon.process.send_signal(signal.SIGHUP)
        assert systemd.message() == ["STATUS=converged: 1 converged"], "resynced at once"

        rss = _rss_kib(daemon.process.pid)
        sent = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        daemon.process.wait(timeout=30)
        elapsed = time.monotonic() - sent
        assert daemon.process.returncode == 0
        assert systemd.message() == ["STOPPING=1", "STATUS=stopping (SIGTERM)"]
        assert not (state / "ready").exists()
    finally:
        daemon.stop()
    after = subprocess.run(
        [sys.executable, "-c", probe, str(state)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert after.stdout.strip() == "False", "the kernel dropped the flock with the process"
    print(f"RSS {rss} KiB; SIGTERM to exit {elapsed * 1000:.0f} ms")


def test_with_the_iommu_off_ready_comes_at_once_and_the_daemon_stays(
    tmp_path: Path, systemd: Listener
) -> None:
    """kubelet, ordered after the unit, starts within seconds on a node whose IOMMU is off
    in the BIOS; the daemon stays up, not converged, and keeps checking."""
    roots, _ = materialize(tmp_path / "machine", lambda k: npu_node(k, count=1), iommu=False)
    state = tmp_path / "state"
    argv = _cli(roots, state, "daemon", "--no-load-modules", "--resync-interval", "3600")
    daemon = Daemon(argv, _env(NOTIFY_SOCKET=systemd.env_value))
    try:
        assert systemd.message() == ["STATUS=starting: first reconcile under way"]
        ready, status = systemd.message()
        assert ready == "READY=1"
        assert status.startswith("STATUS=host not ready (iommu")
        assert status.endswith("; 1 pending")
        assert not (state / "ready").exists(), "the ready file says converged, and it is not"
        daemon.process.send_signal(signal.SIGHUP)
        assert systemd.message() == [status], "still up, checked again"
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=30) == 0
    finally:
        daemon.stop()


def test_the_cluster_files_come_and_go_with_the_process(
    tmp_path: Path, converged_node: tuple[Roots, str], systemd: Listener
) -> None:
    """The NFD feature file and the operator's validation file, written by the daemon process
    once its first reconcile is done, removed when it stops."""
    roots, npu = converged_node
    features, validation = tmp_path / "features.d", tmp_path / "validations"
    features.mkdir()
    validation.mkdir()
    argv = _cli(
        roots, tmp_path / "state", "daemon", "--resync-interval", "3600",
        "--nfd-features-file", str(features / "vfio-manager"),
    )  # fmt: skip
    env = _env(
        NOTIFY_SOCKET=systemd.env_value,
        VFIO_MANAGER_VALIDATION_FILE=str(validation / "vfio-pci-ready"),
    )
    daemon = Daemon(argv, env)
    try:
        assert systemd.message()[0].startswith("STATUS=starting")
        assert systemd.message() == ["READY=1", "STATUS=converged: 1 converged"]
        now = datetime.datetime.now(datetime.timezone.utc)
        labels = nfd.labels(features, now)
        assert labels["feature.node.kubernetes.io/vfio-manager.converged"] == "true"
        assert labels["feature.node.kubernetes.io/vfio-manager.vfio.RBLN-CA22"] == "1"
        ready = (validation / "vfio-pci-ready").read_text()
        assert ready == f"VFIO_PCI_BOUND_DEVICES={npu}\n"
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=30) == 0
    finally:
        daemon.stop()
    assert os.listdir(features) == []
    assert os.listdir(validation) == []

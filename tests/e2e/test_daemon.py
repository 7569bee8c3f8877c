"""`vfio-manager daemon` as a separate process on the real kernel, driven by kernel uevents.

The daemon selects the e1000e (03:00.0, the "NPU"), with a resync interval of an hour, so
anything it repairs within the test's bound it repaired because the kernel told it: a remove
and a rescan (hot-plug), a manual rebind to e1000e (drift), the admin's `unbind` (left on the
host), the same inside `unshare -n` (kernel uevents reach another network namespace of the
initial user namespace, Linux >= 4.18), and SIGTERM (exit 0, devices kept). Waits poll sysfs
with generous bounds; the measured latencies are printed for the report, never asserted
beyond those bounds. There is no udev in the guest: /dev/vfio/N comes from devtmpfs.
"""

import contextlib
import fcntl
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import guest
from conftest import Baseline
from guest import E1000E, PCI, SEL_E1000E

BOUND = 60.0  # seconds; generous for TCG
START = 180.0


class Notify:
    """systemd's side of sd_notify: a datagram socket the daemon sends READY=1 & co. to."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(START)

    def until(self, prefix: str) -> list[str]:
        """Messages until one starts with ``prefix`` (bounded by the socket's timeout)."""
        while True:
            fields = self.sock.recv(4096).decode().split("\n")
            if fields[0].startswith(prefix):
                return fields

    def close(self) -> None:
        self.sock.close()


class Daemon:
    def __init__(self, tmp_path: Path, *extra: str, unshare: bool = False) -> None:
        self.state = str(tmp_path / "state")
        self.log_path = tmp_path / "daemon.log"
        self.notify = Notify(str(tmp_path / "notify.sock"))
        argv = [
            sys.executable, "-m", "vfio_manager", "--state-dir", self.state,
            "--log-format", "json", "daemon", *SEL_E1000E, "--resync-interval", "3600", *extra,
        ]  # fmt: skip
        if unshare:
            argv = ["unshare", "--net", "--", *argv]
        env = {**os.environ, "NOTIFY_SOCKET": self.notify.path}
        env.pop("VFIO_MANAGER_WRITER", None)  # the default: a writer process
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
        self.started = time.monotonic()

    def ready(self) -> tuple[float, list[str]]:
        fields = self.notify.until("READY=1")
        return time.monotonic() - self.started, fields

    def events(self, name: Optional[str] = None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        with open(self.log_path) as log:
            for line in log:
                if line.startswith("{"):
                    doc = json.loads(line)
                    if name is None or doc.get("event") == name:
                        found.append(doc)
        return found

    def ready_counts(self) -> Optional[dict[str, int]]:
        try:
            with open(os.path.join(self.state, "ready")) as f:
                counts: dict[str, int] = json.load(f)["counts"]
                return counts
        except (OSError, ValueError):
            return None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vfio_manager", "--state-dir", self.state, *args],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    def terminate(self) -> float:
        sent = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=120)
        return time.monotonic() - sent

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.notify.close()

    def __str__(self) -> str:
        return self.log_path.read_text()[-4000:]


@contextlib.contextmanager
def running(tmp_path: Path, *extra: str, unshare: bool = False) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path, *extra, unshare=unshare)
    try:
        yield daemon
    finally:
        daemon.close()


def _echo(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def loopback_up() -> None:
    """The guest's init leaves lo down; --listen 127.0.0.1 needs it (SIOCSIFFLAGS, IFF_UP)."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sh22x", b"lo", flags | iff_up))


def _get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def wait_until(predicate: Callable[[], bool], what: str, bound: float = BOUND) -> float:
    """Poll every 10 ms; the seconds it took. Fails after ``bound``."""
    started = time.monotonic()
    guest.wait_for(predicate, timeout=bound, what=what)
    return time.monotonic() - started


def hotplug_cycle() -> tuple[float, float]:
    """Remove the e1000e, rescan: it comes back on its native driver (no override survives a
    remove), unless someone moves it. Returns (seconds from the rescan write to vfio-pci,
    seconds from its reappearance to vfio-pci)."""
    _echo(f"{PCI}/{E1000E}/remove", "1")
    wait_until(lambda: not os.path.exists(f"{PCI}/{E1000E}"), "the remove")
    rescanned = time.monotonic()
    _echo("/sys/bus/pci/rescan", "1")
    wait_until(lambda: os.path.exists(f"{PCI}/{E1000E}"), "the rescan")
    appeared = time.monotonic()
    guest.wait_for(
        lambda: guest.driver(E1000E) == "vfio-pci" and guest.vfio_dev(E1000E) is not None,
        timeout=BOUND,
        what="the daemon to bind the hot-added function",
    )
    bound = time.monotonic()
    return bound - rescanned, bound - appeared


def test_the_daemon_repairs_hotplug_and_drift_and_respects_the_admin(
    baseline: Baseline, tmp_path: Path
) -> None:
    loopback_up()
    with running(tmp_path, "--listen", "127.0.0.1:0") as daemon:
        took, fields = daemon.ready()
        assert fields[1:] == ["STATUS=converged: 1 converged"], str(daemon)
        assert guest.driver(E1000E) == "vfio-pci"
        assert guest.override(E1000E) == "vfio-pci"
        assert guest.vfio_dev(E1000E) is not None, "devtmpfs made /dev/vfio/N"
        (started,) = daemon.events("daemon starting")
        assert started["uevents"] is True, "the netlink socket opened"
        print(f"daemon: start to READY=1 {took:.2f}s; RSS {daemon.rss_kib()} KiB")
        (listening,) = daemon.events("listening")
        port = int(listening["address"].rsplit(":", 1)[1])
        status, body = _get(port, "/readyz")
        assert status == 200, body
        assert json.loads(body)["counts"]["converged"] == 1

        # hot-plug: remove + rescan -> bound again, by the uevent (resync is an hour away)
        from_rescan, from_add = hotplug_cycle()
        print(f"hot-plug: rescan to vfio-pci {from_rescan:.3f}s, add to vfio-pci {from_add:.3f}s")

        # drift: an admin puts it back on e1000e by hand -> repaired
        _echo(f"{PCI}/{E1000E}/driver_override", "\n")
        _echo("/sys/bus/pci/drivers/vfio-pci/unbind", E1000E)
        _echo("/sys/bus/pci/drivers/e1000e/bind", E1000E)
        drifted = time.monotonic()
        wait_until(lambda: guest.driver(E1000E) == "vfio-pci", "the drift to be repaired")
        print(f"drift: e1000e bind to vfio-pci {time.monotonic() - drifted:.3f}s")

        # the admin's unbind while the daemon runs: recorded, left on the host
        r = daemon.cli("unbind", E1000E, *SEL_E1000E)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "intent recorded" in r.stderr
        assert guest.driver(E1000E) == "e1000e"
        wait_until(
            lambda: (daemon.ready_counts() or {}).get("intent-host") == 1,
            "the daemon to report the intent",
        )
        assert guest.driver(E1000E) == "e1000e", "the daemon moved it back"
        shown = daemon.cli("status", *SEL_E1000E)
        assert f"intent: {E1000E} left on the host by intent" in shown.stdout, shown.stdout
        r = daemon.cli("bind", E1000E, *SEL_E1000E)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_until(
            lambda: (daemon.ready_counts() or {}).get("converged") == 1,
            "the daemon to manage it again",
        )
        assert guest.driver(E1000E) == "vfio-pci"

        cpu = daemon.cpu_seconds()
        took = daemon.terminate()
        assert daemon.process.returncode == 0, str(daemon)
        assert daemon.notify.until("STOPPING=1") == ["STOPPING=1", "STATUS=stopping (SIGTERM)"]
        print(f"SIGTERM to exit {took:.3f}s; CPU used over the test {cpu:.2f}s")
    assert guest.driver(E1000E) == "vfio-pci", "--on-exit keep: the device stays"
    assert not os.path.exists(os.path.join(daemon.state, "ready"))


def test_the_daemon_sees_uevents_inside_its_own_network_namespace(
    baseline: Baseline, tmp_path: Path
) -> None:
    assert shutil.which("unshare"), "util-linux is part of the guest image"
    with running(tmp_path, unshare=True) as daemon:
        daemon.ready()
        assert guest.driver(E1000E) == "vfio-pci"
        (started,) = daemon.events("daemon starting")
        assert started["uevents"] is True, str(daemon)
        from_rescan, _ = hotplug_cycle()
        print(f"unshare -n: rescan to vfio-pci {from_rescan:.3f}s")
        assert daemon.terminate() < BOUND
        assert daemon.process.returncode == 0, str(daemon)
    assert guest.driver(E1000E) == "vfio-pci"


def test_status_wait_returns_when_the_daemon_has_converged(
    baseline: Baseline, tmp_path: Path
) -> None:
    assert guest.driver(E1000E) == "e1000e"
    quick = subprocess.run(
        [sys.executable, "-m", "vfio_manager", "status", "--check", "--wait", "1", *SEL_E1000E],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert quick.returncode == 1, "not converged within 1 s: exit 1"
    waiter = subprocess.Popen(
        [sys.executable, "-m", "vfio_manager", "status", "--check", "--wait", "300",
         *SEL_E1000E],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with running(tmp_path) as daemon:
            daemon.ready()
            converged = time.monotonic()
            out, err = waiter.communicate(timeout=BOUND)
            print(f"status --wait returned {time.monotonic() - converged:.3f}s after READY=1")
            assert waiter.returncode == 0, out + err
            assert "vfio-pci" in out
            daemon.terminate()
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()

"""Helpers shared by the test suites: the CLI against the fake kernel, a node's state, fake
processes and journal records, fake time and uevent sockets.

Fixtures built on these (``run``, ``uevent_pair``, ...) are in the conftest files.
"""

from __future__ import annotations

import json
import os
import posixpath
import select
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from click.testing import CliRunner
from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness import FakeKernel
from vfio_manager.cli.main import cli
from vfio_manager.kernel.uevents import DatagramUeventSource
from vfio_manager.pipeline.node import Node
from vfio_manager.safety.journal import Journal

# -- the CLI against the fake kernel -----------------------------------------------------------


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def log_events(self) -> list[dict[str, Any]]:
        """The structlog events (JSON lines) the command wrote to stderr."""
        events = []
        for line in self.stderr.splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events


RunCli = Callable[..., Run]


def state_dir(kernel: FakeKernel) -> str:
    """The lock and journal directory of CLI runs against ``kernel`` (on the fake fs)."""
    return f"{kernel.host_root}/run/vfio-manager"


def root_args(kernel: FakeKernel) -> list[str]:
    """The global options that point the CLI at ``kernel`` (all on the fake file system)."""
    return [
        "--sysfs-root",
        kernel.sys_root,
        "--dev-root",
        kernel.dev_root,
        "--host-root",
        kernel.host_root,
        "--state-dir",
        state_dir(kernel),
        "--proc-root",
        kernel.proc_root,
        "--log-format",
        "json",
    ]


def invoke(kernel: FakeKernel, *args: str) -> Run:
    result = CliRunner().invoke(cli, [*root_args(kernel), *args], catch_exceptions=False)
    return Run(result.exit_code, result.stdout, result.stderr)


def node_of(kernel: FakeKernel, state: Optional[str] = None, **settings: Any) -> Node:
    """The node the CLI builds for ``kernel``, writing from threads (the fake is in memory)."""
    return Node(
        sysfs_root=kernel.sys_root,
        dev_root=kernel.dev_root,
        host_root=kernel.host_root,
        proc_root=kernel.proc_root,
        state_dir=state or state_dir(kernel),
        writer="thread",
        **settings,
    )


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no `except Exception` can absorb it."""


# Patcher(additional_skip_names): the state directory's gateway, the lock and the journal
# use the real filesystem (pyfakefs makes flock a no-op); sysfs stays fake
REAL_STATE = [
    [["vfio_manager.safety.statedir", "vfio_manager.safety.lock", "vfio_manager.safety.journal"]]
]

# -- a function's state and the writes about it ------------------------------------------------

State = tuple[Optional[str], Optional[str]]  # (driver, driver_override)

HOST: State = ("rebellions", None)
VFIO: State = ("vfio-pci", "vfio-pci")


def state(kernel: FakeKernel, bdf: str) -> State:
    return kernel.driver_of(bdf), kernel.override_of(bdf)


def states(kernel: FakeKernel, bdfs: list[str]) -> dict[str, State]:
    return {bdf: state(kernel, bdf) for bdf in bdfs if kernel.has_function(bdf)}


def named_bdf(path: str, data: str) -> Optional[str]:
    """The function a write is about: from a device attribute's path or a driver file's data."""
    parts = path.split("/")
    if parts[:3] == ["bus", "pci", "devices"] and len(parts) == 5:
        return parts[3]
    if path == "bus/pci/drivers_probe" or (
        parts[:3] == ["bus", "pci", "drivers"]
        and len(parts) == 5
        and parts[4] in ("bind", "unbind")
    ):
        return data.strip()
    return None  # any other file: never written by the tool


def operator(kernel: FakeKernel, rel: str, data: str) -> None:
    """What an admin (or a script this tool replaces) writes to sysfs by hand."""
    fd = os.open(f"{kernel.sys_root}/{rel}", os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def with_pci_stub(kernel: FakeKernel) -> None:
    kernel.add_driver("pci-stub", module="pci_stub", dma_safe=True)


def park_on_pci_stub(kernel: FakeKernel, bdf: str, *, keep_override: bool) -> None:
    """Override, unbind, probe (driverctl's way); or through a pci-stub dynamic ID and an
    explicit bind, with no override left (pci-stub.ids=, new_id + bind)."""
    if keep_override:
        operator(kernel, f"bus/pci/devices/{bdf}/driver_override", "pci-stub")
        operator(kernel, f"bus/pci/drivers/{kernel.driver_of(bdf)}/unbind", bdf)
        operator(kernel, "bus/pci/drivers_probe", bdf)
    else:
        operator(kernel, "bus/pci/drivers/pci-stub/new_id", "1eff 1220")
        operator(kernel, f"bus/pci/drivers/{kernel.driver_of(bdf)}/unbind", bdf)
        operator(kernel, "bus/pci/drivers/pci-stub/bind", bdf)
    assert state(kernel, bdf) == ("pci-stub", "pci-stub" if keep_override else None)
    kernel.clear_writes()


# -- processes that hold a function ------------------------------------------------------------


def fake_process(
    fs: FakeFilesystem,
    kernel: FakeKernel,
    pid: int,
    comm: str,
    fds: tuple[str, ...] = (),
    maps: tuple[str, ...] = (),
) -> None:
    """A process in the fake /proc holding ``fds`` open and mapping ``maps``."""
    base = posixpath.join(kernel.proc_root, str(pid))
    fs.create_file(posixpath.join(base, "comm"), contents=comm + "\n")
    fs.create_dir(posixpath.join(base, "fd"))
    for number, target in enumerate(fds, start=3):
        fs.create_symlink(posixpath.join(base, "fd", str(number)), target)
    lines = [
        f"7f00{i:04x}0000-7f00{i:04x}1000 rw-s 00000000 00:15 42 {path}"
        for i, path in enumerate(maps)
    ]
    fs.create_file(posixpath.join(base, "maps"), contents="\n".join(lines) + "\n")


def device_dir(kernel: FakeKernel, bdf: str) -> str:
    """The function's real directory under devices/ (bus/pci/devices/BDF is a symlink)."""
    return os.path.realpath(posixpath.join(kernel.sys_root, "bus/pci/devices", bdf))


def native_node(fs: FakeFilesystem, kernel: FakeKernel, bdf: str, name: str = "rbln0") -> None:
    """The class device the rebellions driver creates: devices/BDF/rebellions/rbln0."""
    base = posixpath.join(device_dir(kernel, bdf), "rebellions", name)
    fs.create_file(posixpath.join(base, "dev"), contents="240:0\n")
    fs.create_file(posixpath.join(base, "uevent"), contents=f"MAJOR=240\nMINOR=0\nDEVNAME={name}\n")


# -- journal records ---------------------------------------------------------------------------


def pending(kernel: FakeKernel) -> list[str]:
    return sorted(e.bdf or "?" for e in Journal(state_dir(kernel)).pending())


def plant_record(kernel: FakeKernel, bdf: str, **fields: object) -> str:
    """A transition record as a killed run would leave it (fields override the defaults)."""
    record: dict[str, object] = {
        "version": 1,
        "record": "transition",
        "bdf": bdf,
        "direction": "vfio",
        "vendor_device": None,
        "original_driver": None,
        "original_override": None,
        "steps_done": ["set-override"],
        "started_at": "2026-11-30T00:00:00+00:00",
        "updated_at": "2026-11-30T00:00:00+00:00",
        "pid": 999999,
        "origin_created": False,
    }
    record.update(fields)
    directory = state_dir(kernel)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = posixpath.join(directory, f"journal-{bdf}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    return path


# -- fake time and uevent sockets --------------------------------------------------------------


class FakeClock:
    """Time that moves only when a test advances it or the code under test sleeps."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.slept += seconds
        self.now += seconds


class AdvancingWaiter:
    """A ``poll`` that does not wait: readable descriptors return at once (real ``poll`` with
    timeout 0); otherwise the fake clock jumps by the timeout, as if it had slept.
    ``before`` runs first on every wait (a fake kernel announcing its changes, say)."""

    def __init__(self, clock: FakeClock, before: Optional[Callable[[], object]] = None) -> None:
        self.clock = clock
        self.before = before
        self.timeouts: list[float] = []

    def wait(self, fds: Sequence[int], timeout: float) -> set[int]:
        if self.before is not None:
            self.before()
        self.timeouts.append(timeout)
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(0)}
        if not ready:
            self.clock.advance(timeout)
        return ready


def open_uevent_pair(*, kernel_only: bool = False) -> tuple[socket.socket, DatagramUeventSource]:
    """A sender and the uevent source reading what it sends (a datagram socketpair)."""
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    return sender, DatagramUeventSource(receiver, kernel_only=kernel_only)

"""The real daemon (service, loop, reconciler, pipeline) against the fake kernel.

The fake kernel does not broadcast uevents itself, so :class:`KernelUevents` announces its
changes the way the kernel does: it diffs what sysfs shows (functions, their drivers, the
registered PCI drivers) against what it announced last and sends, over a real datagram
socketpair, the kernel's sequence in the kernel's format (``unbind`` before ``remove``,
``add`` before ``bind``, ``SUBSYSTEM=drivers`` for a driver that registers or leaves). Only
what a test could also see through sysfs is used, so a change made by the daemon's own writes
is announced exactly like one made by an admin or a hot-plug.

:class:`~tests.support.AdvancingWaiter` is the loop's ``poll``; it announces pending changes
first, then returns the readable descriptors at once, or advances the fake clock by the
timeout the loop asked for, as if it had slept.
"""

from __future__ import annotations

import json
import select
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
from pyfakefs.fake_filesystem_unittest import Pause

from tests.daemon.fakes import Listener
from tests.harness import FakeKernel
from tests.harness.uevents import driver_event, pci_event
from tests.support import AdvancingWaiter, FakeClock, node_of, open_uevent_pair
from vfio_manager.daemon.reconciler import State
from vfio_manager.daemon.service import Daemon, DaemonOptions, build_daemon
from vfio_manager.host.modules import RunResult
from vfio_manager.pipeline.node import Node
from vfio_manager.safety.intents import IntentStore

WALL = 1714564800.0

# Patcher(additional_skip_names): the state directory (lock, journal, intents, presence,
# ready file) is a real directory, so its flocks are real (pyfakefs fakes flock: a daemon
# would never look present), and the loop's and the HTTP server's self-pipes are real pipes.
DAEMON_REAL_STATE = [
    [
        [
            "vfio_manager.safety.lock",
            "vfio_manager.safety.journal",
            "vfio_manager.safety.statedir",
            "vfio_manager.safety.intents",
            "vfio_manager.daemon.health",
            "vfio_manager.daemon.loop",
        ]
    ]
]


class KernelUevents:
    """Announces the fake kernel's changes as kernel uevents (see the module docstring)."""

    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel
        self.sender, self.source = open_uevent_pair()
        self.sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.sent: list[tuple[str, str]] = []
        self._functions, self._drivers = self._now()

    def _now(self) -> tuple[dict[str, Optional[str]], set[str]]:
        return (
            {bdf: self.kernel.driver_of(bdf) for bdf in self.kernel.functions()},
            set(self.kernel.drivers()),
        )

    def _ids(self, bdf: str) -> tuple[str, str, str]:
        def attr(name: str) -> str:
            path = f"{self.kernel.sys_root}/bus/pci/devices/{bdf}/{name}"
            with open(path) as handle:
                return handle.read().strip()[2:].upper()

        return attr("vendor"), attr("device"), attr("class")

    def _send(self, data: bytes, what: tuple[str, str]) -> None:
        self.sender.send(data)
        self.sent.append(what)

    def announce(self) -> int:
        """Send the uevents for everything that changed since the last call; how many."""
        functions, drivers = self._now()
        before = len(self.sent)
        for name in sorted(drivers - self._drivers):
            self._send(driver_event("add", name), ("add", name))
        for bdf, old in sorted(self._functions.items()):
            new = functions.get(bdf, "gone")
            if new == old:
                continue
            if old is not None:
                self._send(pci_event("unbind", bdf), ("unbind", bdf))
            if new == "gone":
                self._send(pci_event("remove", bdf), ("remove", bdf))
            elif new is not None:
                v, d, c = self._ids(bdf)
                event = pci_event("bind", bdf, driver=new, vendor=v, device=d, pci_class=c)
                self._send(event, ("bind", bdf))
        for bdf in sorted(set(functions) - set(self._functions)):
            v, d, c = self._ids(bdf)
            self._send(pci_event("add", bdf, vendor=v, device=d, pci_class=c), ("add", bdf))
            if functions[bdf] is not None:
                event = pci_event(
                    "bind", bdf, driver=functions[bdf], vendor=v, device=d, pci_class=c
                )
                self._send(event, ("bind", bdf))
        for name in sorted(self._drivers - drivers):
            self._send(driver_event("remove", name), ("remove", name))
        self._functions, self._drivers = functions, drivers
        return len(self.sent) - before

    def close(self) -> None:
        self.sender.close()
        self.source.close()


@dataclass
class KernelRig:
    kernel: FakeKernel
    daemon: Daemon
    clock: FakeClock
    uevents: KernelUevents
    systemd: Listener
    node: Node
    options: DaemonOptions
    exit_code: Optional[int] = None
    messages: list[list[str]] = field(default_factory=list)

    @property
    def loop(self) -> Any:
        return self.daemon.loop

    def start(self) -> None:
        self.loop.start()
        self.uevents.announce()  # the kernel announces the daemon's writes as they happen

    def step(self) -> None:
        assert self.loop.step()
        self.uevents.announce()

    def step_until(self, predicate: Any, limit: int = 12) -> None:
        """Step the loop until ``predicate()`` holds (bounded: it must get there)."""
        for _ in range(limit):
            if predicate():
                return
            self.step()
        assert predicate(), f"not reached within {limit} steps"

    def settle(self, limit: int = 12) -> None:
        """Step until the changes are announced and the debounce window has closed."""
        for _ in range(limit):
            self.uevents.announce()
            queued = select.select([self.uevents.source.fileno()], [], [], 0)[0]
            if not queued and self.loop.debouncer.due_at() is None:
                return
            self.step()
        pytest.fail(f"the loop did not settle within {limit} steps")

    def state(self, bdf: str) -> Optional[State]:
        status = self.loop.view.functions.get(bdf)
        return status.state if status is not None else None

    def ready_doc(self) -> Optional[dict[str, Any]]:
        """The ready file's document, ``None`` when absent (read from the real disk)."""
        with Pause(self.kernel.fs):
            path = Path(self.loop.ready_file.path)
            if not path.exists():
                return None
            doc: dict[str, Any] = json.loads(path.read_text())
        return doc

    def intents(self) -> list[str]:
        """The BDFs with an intent in the (real) state directory."""
        return sorted(IntentStore(self.node.state_dir).read())

    def notifications(self) -> list[list[str]]:
        self.messages += self.systemd.pending()
        return self.messages

    def stop(self) -> int:
        self.loop.request_stop(15)
        assert not self.loop.step()
        try:
            self.exit_code = self.loop.finish()
        finally:
            self.daemon.close()
        return self.exit_code

    def metric(self, name: str, **labels: str) -> Optional[float]:
        metrics = self.daemon.loop.metrics
        assert metrics is not None, "build the rig with listen"
        value: Optional[float] = metrics.registry.get_sample_value(name, labels)
        return value


def make_rig(
    kernel: FakeKernel,
    state_dir: str,
    options: Optional[DaemonOptions] = None,
    lock_timeout: float = 5.0,
    **settings: Any,
) -> KernelRig:
    """A daemon built by the service, as ``vfio-manager daemon`` builds it, with the uevent
    source, the clock, the waiter and the environment injected."""
    clock = FakeClock()
    uevents = KernelUevents(kernel)
    systemd = Listener(f"@vfio-manager-test-{uuid.uuid4().hex}")
    node = node_of(kernel, state_dir, timeout=5.0, lock_timeout=lock_timeout)
    options = options or DaemonOptions()
    daemon = build_daemon(
        node,
        options,
        open_source=lambda _options: uevents.source,
        clock=clock,
        wall_clock=lambda: WALL,
        waiter=AdvancingWaiter(clock, before=uevents.announce),
        env={"NOTIFY_SOCKET": systemd.env_value},
        runner=lambda argv: RunResult(*kernel.run_modprobe(argv)),
        signals=False,
        process_metrics=False,
        **settings,
    )
    return KernelRig(kernel, daemon, clock, uevents, systemd, node, options)


def close_rig(rig: KernelRig) -> None:
    if rig.exit_code is None:
        rig.daemon.close()
    rig.uevents.close()
    rig.systemd.close()

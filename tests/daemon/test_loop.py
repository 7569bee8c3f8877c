"""The reconcile loop with a fake reconciler, real descriptors and an injected clock; its
debounce, backoff and flap guard on their own; and the loop as a separate process.

Uevents travel as kernel-format datagrams over a real socketpair, systemd is a real datagram
socket, the ready file a real file; only time is fake (the waiter advances the clock by the
timeout the loop asked for, so every test also shows how long the loop would have slept).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.daemon.fakes import VFIO, FakeNode, Listener, sample
from tests.harness.uevents import driver_event, pci_event
from tests.support import AdvancingWaiter, FakeClock, open_uevent_pair
from vfio_manager.daemon import loop as loop_module
from vfio_manager.daemon.health import DaemonMetrics, Notifier, ReadyFile
from vfio_manager.daemon.loop import (
    Backoff,
    Batch,
    Debouncer,
    FlapGuard,
    LoopSettings,
    ReconcileLoop,
    summary,
)
from vfio_manager.daemon.reconciler import HostCheck, Reason, State
from vfio_manager.errors import VfioManagerError
from vfio_manager.kernel.uevents import Uevent, UeventBatch
from vfio_manager.safety.intents import IntentStore

A, B, C = "0000:03:00.0", "0000:04:00.0", "0000:05:00.0"
IOMMU_OFF = HostCheck("iommu", "no IOMMU groups in /sys/kernel/iommu_groups", "intel_iommu=on")


@dataclass
class Rig:
    loop: ReconcileLoop
    node: FakeNode
    clock: FakeClock
    waiter: AdvancingWaiter
    sender: socket.socket
    systemd: Listener
    ready_path: Path
    exits: list[str] = field(default_factory=list)

    def send(self, *datagrams: bytes) -> None:
        for data in datagrams:
            self.sender.send(data)

    def step_until_reconciled(self, limit: int = 6) -> None:
        """Step until the next reconcile happened (bounded: the loop must get there)."""
        before = self.loop.reconciles
        for _ in range(limit):
            assert self.loop.step()
            if self.loop.reconciles > before:
                return
        pytest.fail(f"no reconcile within {limit} steps")

    def state(self, bdf: str) -> State:
        return self.loop.view.functions[bdf].state

    def ready_doc(self) -> Optional[dict[str, Any]]:
        if not self.ready_path.exists():
            return None
        doc: dict[str, Any] = json.loads(self.ready_path.read_text())
        return doc

    def notifications(self) -> list[list[str]]:
        return self.systemd.pending()


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Any]:
    made: list[Rig] = []

    def make(
        drivers: dict[str, Optional[str]],
        *,
        settings: Optional[LoopSettings] = None,
        metrics: Optional[DaemonMetrics] = None,
        env: Optional[dict[str, str]] = None,
        **node_fields: Any,
    ) -> Rig:
        clock = FakeClock()
        node = FakeNode(drivers=dict(drivers), **node_fields)
        sender, source = open_uevent_pair()
        systemd = Listener(str(tmp_path / f"notify-{len(made)}.sock"))
        waiter = AdvancingWaiter(clock)
        ready_path = tmp_path / f"ready-{len(made)}"
        rig_exits: list[str] = []
        loop = ReconcileLoop(
            node.reconcile,
            source=source,
            settings=settings or LoopSettings(),
            clock=clock,
            wall_clock=lambda: 1714564800.0,
            waiter=waiter,
            notifier=Notifier.from_environment({"NOTIFY_SOCKET": systemd.env_value, **(env or {})}),
            ready_file=ReadyFile(str(ready_path), wall_clock=lambda: 1714564800.0),
            metrics=metrics,
            on_exit=lambda: rig_exits.append("on_exit"),
        )
        rig = Rig(loop, node, clock, waiter, sender, systemd, ready_path, rig_exits)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.sender.close()
        if rig.loop.source is not None:
            rig.loop.source.close()
        rig.systemd.close()
        rig.loop.close()


# -- start and idle ----------------------------------------------------------------------------
def test_start_converges_then_says_ready_once(make_rig: Any) -> None:
    rig = make_rig({A: "rebellions", B: VFIO})
    rig.ready_path.write_text("stale from a killed daemon")
    rig.loop.start()
    assert rig.node.requests[0].affected is None, "the first reconcile is a full one"
    assert rig.node.drivers == {A: VFIO, B: VFIO}
    assert rig.ready_doc() == {
        "converged": True,
        "since": "2024-05-01T12:00:00Z",
        "pid": rig.ready_doc()["pid"],
        "counts": {
            "converged": 2,
            "pending": 0,
            "held": 0,
            "excluded": 0,
            "failed": 0,
            "intent-host": 0,
        },
    }
    assert rig.notifications() == [
        ["STATUS=starting: first reconcile under way"],
        ["READY=1", "STATUS=converged: 2 converged"],
    ]
    assert rig.loop.view.converged
    rig.loop.step()  # the next resync
    assert ["READY=1"] not in [m[:1] for m in rig.notifications()], "READY=1 only once"


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"held": {A}}, "not converged: 1 held"),
        ({"failing": {A: "EINVAL"}}, "not converged: 1 failed"),
        ({"host_failing": [IOMMU_OFF]}, "host not ready (iommu); 1 pending"),
        ({"error": VfioManagerError("lock timeout")}, "not converged: last reconcile failed: "
         "lock timeout"),
    ],
)  # fmt: skip
def test_ready_once_the_first_reconcile_finished_whatever_its_outcome(
    make_rig: Any, fields: dict[str, Any], status: str
) -> None:
    """systemd's units ordered after the daemon (kubelet) wait for its first reconcile only."""
    rig = make_rig({A: "rebellions"}, **fields)
    rig.loop.start()
    assert rig.notifications() == [
        ["STATUS=starting: first reconcile under way"],
        ["READY=1", f"STATUS={status}"],
    ]
    assert rig.ready_doc() is None, "the ready file still means converged"
    assert not rig.loop.view.converged
    rig.loop.request_resync()
    rig.step_until_reconciled()
    assert all(m[0] != "READY=1" for m in rig.notifications()), "READY=1 once"


def test_nothing_to_do_is_ready_too(make_rig: Any) -> None:
    rig = make_rig({})
    rig.loop.start()
    assert rig.notifications()[-1] == ["READY=1", "STATUS=converged: no selected function"]
    assert rig.ready_doc() is not None


def test_idle_wakes_once_per_resync_interval(make_rig: Any) -> None:
    rig = make_rig({A: VFIO}, settings=LoopSettings(resync_interval=60))
    rig.loop.start()
    for _ in range(5):
        rig.loop.step()
    assert rig.waiter.timeouts == [60.0] * 5
    assert [r.affected for r in rig.node.requests] == [None] * 6, "start + one resync per wakeup"


# -- uevents -----------------------------------------------------------------------------------
def test_a_hot_added_function_is_bound_after_one_debounce_window(make_rig: Any) -> None:
    rig = make_rig({A: VFIO}, settings=LoopSettings(debounce=0.2))
    rig.loop.start()
    rig.node.drivers[B] = "rebellions"  # the kernel adds it and the native driver binds it
    rig.send(pci_event("add", B), pci_event("bind", B, driver="rebellions"))
    rig.loop.step()
    assert len(rig.node.requests) == 1, "events open a window; no reconcile yet"
    rig.loop.step()
    assert rig.waiter.timeouts[-1] == pytest.approx(0.2), "slept exactly to the window's end"
    assert rig.node.requests[-1].affected == {B}
    assert rig.node.drivers[B] == VFIO
    assert rig.state(B) is State.CONVERGED
    assert rig.ready_doc()["counts"]["converged"] == 2


def test_a_removed_function_leaves_the_view(make_rig: Any) -> None:
    rig = make_rig({A: VFIO, B: VFIO})
    rig.loop.start()
    del rig.node.drivers[B]
    rig.send(pci_event("unbind", B), pci_event("remove", B))
    rig.step_until_reconciled()
    assert rig.node.requests[-1].affected == {B}
    assert set(rig.loop.view.functions) == {A}
    assert rig.ready_doc()["counts"]["converged"] == 1


def test_drift_back_to_the_native_driver_is_repaired(make_rig: Any) -> None:
    rig = make_rig({A: VFIO})
    rig.loop.start()
    rig.node.drivers[A] = "rebellions"  # someone rebinds it by hand
    rig.send(pci_event("unbind", A), pci_event("bind", A, driver="rebellions"))
    rig.step_until_reconciled()
    assert rig.node.drivers[A] == VFIO


def test_a_pci_driver_registering_triggers_a_full_resync(make_rig: Any) -> None:
    rig = make_rig({A: VFIO})
    rig.loop.start()
    rig.send(driver_event("add", "vfio-pci"))
    rig.step_until_reconciled()
    assert rig.node.requests[-1].affected is None


def test_uevents_are_counted_by_action(make_rig: Any) -> None:
    metrics = DaemonMetrics(process=False)
    rig = make_rig({A: VFIO}, metrics=metrics)
    rig.loop.start()
    rig.send(pci_event("unbind", A), pci_event("bind", A, driver=VFIO), pci_event("bind", B))
    rig.step_until_reconciled()
    text = metrics.render()[0].decode()
    assert sample(text, "vfio_manager_uevents_total", action="bind") == 2
    assert sample(text, "vfio_manager_uevents_total", action="unbind") == 1
    assert sample(text, "vfio_manager_reconcile_duration_seconds_count", scope="partial") == 1


def test_a_lost_source_falls_back_to_resync(make_rig: Any) -> None:
    rig = make_rig({A: VFIO})
    rig.loop.start()

    class Broken:
        def __init__(self, fd: int) -> None:
            self.fd = fd
            self.closed = False

        def fileno(self) -> int:
            return self.fd

        def read_pending(self) -> Any:
            from vfio_manager.kernel.uevents import UeventBatch

            return UeventBatch(closed=True)

        def close(self) -> None:
            self.closed = True

    readable, writable = os.pipe()
    os.write(writable, b"\0")
    broken = Broken(readable)
    rig.loop.source = broken
    rig.loop.step()
    assert broken.closed
    assert rig.loop.source is None
    rig.step_until_reconciled()
    assert rig.node.requests[-1].affected is None, "events may be lost: full resync"
    os.close(readable)
    os.close(writable)


# -- the admin, exclusions, holders --------------------------------------------------------------
def test_an_admin_intent_is_respected_then_cleared(make_rig: Any, tmp_path: Path) -> None:
    store = IntentStore(str(tmp_path / "state"))
    rig = make_rig({A: VFIO, B: VFIO}, intents=store)
    rig.loop.start()
    # `vfio-manager unbind A` while the daemon runs: intent first, then the unbind
    store.add(A, command="vfio-manager unbind 0000:03:00.0")
    rig.node.drivers[A] = "rebellions"
    rig.send(pci_event("unbind", A), pci_event("bind", A, driver="rebellions"))
    rig.step_until_reconciled()
    assert rig.node.drivers[A] == "rebellions", "left on the host"
    assert rig.state(A) is State.INTENT_HOST
    assert rig.ready_doc()["counts"]["intent-host"] == 1, "settled: still ready"
    # `vfio-manager bind A`: clears the intent (and binds; here the next resync does)
    store.clear([A])
    rig.loop.request_resync()
    rig.step_until_reconciled()
    assert rig.node.drivers[A] == VFIO
    assert rig.state(A) is State.CONVERGED


def test_excluded_is_settled_and_held_is_not(make_rig: Any) -> None:
    rig = make_rig({A: "rebellions", B: "rebellions"}, excluded={A}, held={B})
    rig.loop.start()
    assert rig.node.drivers == {A: "rebellions", B: "rebellions"}, "neither touched"
    assert (rig.state(A), rig.state(B)) == (State.EXCLUDED, State.HELD)
    assert rig.ready_doc() is None
    readyz = rig.loop.view.to_json(rig.loop.alive())
    assert [(f["bdf"], f["state"]) for f in readyz["not_converged"]] == [(B, "held")]
    assert rig.notifications()[-1] == ["READY=1", "STATUS=not converged: 1 held, 1 excluded"]
    rig.node.held.clear()  # the VM stops
    rig.send(pci_event("change", B))
    rig.step_until_reconciled()
    assert rig.state(B) is State.CONVERGED
    assert rig.ready_doc() is not None
    assert rig.notifications() == [["STATUS=converged: 1 converged, 1 excluded"]]


# -- failures ----------------------------------------------------------------------------------
def test_a_failing_function_is_retried_with_capped_backoff(
    make_rig: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors: list[dict[str, Any]] = []
    monkeypatch.setattr(
        loop_module.log, "error", lambda event, **kw: errors.append({"event": event, **kw})
    )
    reason = "drivers_probe: EINVAL (the driver refused the function at probe)"
    rig = make_rig(
        {A: "rebellions", B: VFIO},
        failing={A: reason},
        settings=LoopSettings(resync_interval=1000, backoff_initial=1, backoff_cap=4),
    )
    rig.loop.start()
    assert rig.state(A) is State.FAILED
    assert rig.loop.view.functions[A].reason == reason
    attempts = [rig.clock.now]
    # an unrelated event while A waits: A is passed as skip, shown failed, not written
    rig.send(pci_event("bind", B, driver=VFIO))
    rig.step_until_reconciled()
    assert rig.node.requests[-1].skip == {A}
    assert rig.state(A) is State.FAILED
    for _ in range(4):
        rig.step_until_reconciled()
        assert rig.node.requests[-1].affected == {A}
        assert rig.node.requests[-1].skip == frozenset()
        attempts.append(rig.clock.now)
    gaps = [round(b - a, 3) for a, b in zip(attempts, attempts[1:])]
    assert gaps == [1, 2, 4, 4], "doubling, capped"
    failures = [e for e in errors if e["event"] == "function failed"]
    assert len(failures) == 5, "each failure reported"
    assert all(e["reason"] == reason for e in failures)
    # fixed: the next retry succeeds and resets the delay
    del rig.node.failing[A]
    rig.step_until_reconciled()
    assert rig.state(A) is State.CONVERGED
    assert rig.loop.backoff.failures(A) == 0
    assert rig.loop.backoff.next_retry_at() is None
    before = rig.clock.now
    rig.loop.step()
    assert rig.waiter.timeouts[-1] == pytest.approx(attempts[0] + 1000 - before), (
        "no retry timer left: the next wakeup is the resync"
    )


def test_a_waiting_function_shows_its_last_reason_and_next_retry(make_rig: Any) -> None:
    rig = make_rig({A: "rebellions"}, failing={A: "EBUSY"})
    rig.loop.start()
    rig.send(pci_event("change", A))
    rig.step_until_reconciled()
    status = rig.loop.view.functions[A]
    assert (status.state, status.reason) == (State.FAILED, "EBUSY")
    assert status.remedy is not None
    assert "retried automatically" in status.remedy
    rig.loop.request_resync()  # the admin fixed it and sends SIGHUP
    rig.step_until_reconciled()
    assert rig.node.requests[-1].affected is None
    assert rig.node.requests[-1].skip == frozenset(), "retried now, not after the delay"
    assert rig.loop.backoff.failures(A) == 2, (
        "start, then the SIGHUP retry (the event fell in the wait)"
    )


def test_a_waiting_function_keeps_its_failures_bounded_reason(make_rig: Any) -> None:
    """The reason label of a failed function's series does not flip while it backs off (an
    alert's ``for:`` would start over at every flip)."""
    rig = make_rig({A: "rebellions", B: VFIO}, failing={A: "EINVAL"})
    rig.loop.start()
    assert rig.loop.view.functions[A].cause is Reason.TRANSITION_FAILED
    rig.send(pci_event("bind", B, driver=VFIO))
    rig.step_until_reconciled()
    assert rig.node.requests[-1].skip == {A}, "waiting"
    assert rig.loop.view.functions[A].cause is Reason.TRANSITION_FAILED


def test_something_that_keeps_moving_a_function_back_is_flapping(make_rig: Any) -> None:
    rig = make_rig({A: VFIO}, settings=LoopSettings(flap_limit=3, flap_window=60))
    rig.loop.start()
    for _ in range(4):
        rig.node.drivers[A] = "rebellions"  # a udev rule rebinds it every time
        rig.send(pci_event("bind", A, driver="rebellions"))
        rig.step_until_reconciled()
    assert rig.state(A) is State.FAILED
    assert "more than 3 times" in str(rig.loop.view.functions[A].reason)
    assert rig.loop.view.functions[A].cause is Reason.FLAPPING
    rig.node.drivers[A] = "rebellions"
    rig.send(pci_event("bind", A, driver="rebellions"))
    rig.step_until_reconciled()
    assert rig.node.requests[-1].skip == {A}, "backing off: not moved again at once"
    assert rig.loop.view.functions[A].cause is Reason.FLAPPING
    assert rig.node.drivers[A] == "rebellions"


def test_a_reconcile_that_raises_keeps_the_daemon_up(make_rig: Any) -> None:
    rig = make_rig({A: VFIO})
    rig.node.error = VfioManagerError("another vfio-manager run holds the lock", remedy="wait")
    rig.loop.start()
    assert rig.loop.view.error == "another vfio-manager run holds the lock"
    assert rig.ready_doc() is None
    assert rig.notifications()[-1] == [
        "READY=1",
        "STATUS=not converged: last reconcile failed: another vfio-manager run holds the lock",
    ]
    rig.node.error = RuntimeError("a bug")
    rig.loop.request_resync()
    rig.step_until_reconciled()
    assert rig.loop.view.error == "RuntimeError: a bug"
    rig.node.error = None
    rig.loop.request_resync()
    rig.step_until_reconciled()
    assert rig.loop.view.converged
    assert rig.ready_doc() is not None


# -- host readiness ----------------------------------------------------------------------------
def test_host_not_ready_stays_up_logs_once_and_recovers(
    make_rig: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors: list[dict[str, Any]] = []
    monkeypatch.setattr(
        loop_module.log, "error", lambda event, **kw: errors.append({"event": event, **kw})
    )
    rig = make_rig({A: "rebellions"}, host_failing=[IOMMU_OFF])
    rig.loop.start()
    for _ in range(3):
        rig.loop.step()  # resyncs: re-checked each time
    assert all(r.affected is None for r in rig.node.requests)
    assert rig.node.drivers[A] == "rebellions", "nothing written"
    assert rig.state(A) is State.PENDING
    host_logs = [e for e in errors if e["event"].startswith("host not ready")]
    assert len(host_logs) == 1, "the remedy is logged once"
    assert host_logs[0]["remedy"] == "intel_iommu=on"
    assert rig.loop.view.to_json(rig.loop.alive())["host"]["failing"] == [IOMMU_OFF.to_json()]
    said = rig.notifications()
    assert said[1] == ["READY=1", "STATUS=host not ready (iommu); 1 pending"], "at once"
    assert [m for m in said if m[0] == "READY=1"] == [said[1]], "once"
    # vfio-pci gets loaded: its driver registers, the daemon resyncs at once
    rig.node.host_failing.clear()
    rig.send(driver_event("add", "vfio-pci"))
    rig.step_until_reconciled()
    assert rig.node.drivers[A] == VFIO
    assert rig.notifications()[-1] == ["STATUS=converged: 1 converged"]


# -- signals -----------------------------------------------------------------------------------
def test_sighup_resyncs_now(make_rig: Any) -> None:
    rig = make_rig({A: VFIO}, settings=LoopSettings(resync_interval=60))
    rig.loop.start()
    rig.loop.request_resync()
    rig.loop.step()
    assert rig.node.requests[-1].affected is None
    assert rig.waiter.timeouts == [60.0]
    assert rig.clock.now == 1000.0, "did not wait for the interval"


def test_sigterm_mid_transition_finishes_the_step_then_exits(make_rig: Any) -> None:
    rig = make_rig({A: VFIO})
    rig.loop.start()
    rig.node.drivers[A] = "rebellions"
    seen_stop: list[bool] = []

    def signal_arrives() -> None:
        rig.loop.request_stop(15)
        seen_stop.append(rig.node.requests[-1].stop_requested())

    rig.node.during = signal_arrives
    rig.send(pci_event("bind", A, driver="rebellions"))
    assert rig.loop.step()  # reads the event
    assert rig.loop.step()  # the reconcile, with SIGTERM arriving inside it
    assert seen_stop == [True], "the reconciler can see the stop request"
    assert rig.node.drivers[A] == VFIO, "the transition under way was finished"
    assert rig.loop.step() is False
    assert rig.ready_path.exists()
    assert rig.loop.finish() == 0
    assert rig.exits == ["on_exit"]
    assert not rig.ready_path.exists()
    assert rig.notifications()[-1] == ["STOPPING=1", "STATUS=stopping (SIGTERM)"]


def test_run_returns_0_after_a_stop(make_rig: Any) -> None:
    rig = make_rig({A: "rebellions"})
    rig.node.during = rig.loop.request_stop
    assert rig.loop.run() == 0
    assert rig.node.drivers[A] == VFIO
    assert len(rig.node.requests) == 1
    assert rig.exits == ["on_exit"]


def test_a_failing_on_exit_sets_the_exit_code(make_rig: Any) -> None:
    rig = make_rig({A: VFIO})

    def release() -> None:
        raise VfioManagerError("0000:03:00.0 is held by PID 812", remedy="stop the VM")

    rig.loop.on_exit = release
    rig.loop.start()
    rig.loop.request_stop()
    assert rig.loop.step() is False
    assert rig.loop.finish() == 1


# -- watchdog and health -----------------------------------------------------------------------
def test_the_watchdog_is_pinged_at_half_its_period(make_rig: Any) -> None:
    rig = make_rig(
        {A: VFIO},
        env={"WATCHDOG_USEC": "20000000"},
        settings=LoopSettings(resync_interval=60),
    )
    rig.loop.start()
    for _ in range(6):
        rig.loop.step()
    assert max(rig.waiter.timeouts) <= 10.0
    pings = [m for m in rig.notifications() if m == ["WATCHDOG=1"]]
    assert len(pings) == 7, "one at start, one per 10 s over 60 s"


def starved(message: str = "cannot open state directory: Too many open files") -> Exception:
    """A reconcile's error caused by the process running out of descriptors."""
    error = VfioManagerError(message)
    error.__cause__ = OSError(errno.EMFILE, "Too many open files")
    return error


@pytest.mark.parametrize(
    "error", [starved(), OSError(errno.EMFILE, "Too many open files"), RuntimeError("a bug")]
)
def test_the_watchdog_stops_while_reconciles_make_no_progress(
    make_rig: Any, error: Exception
) -> None:
    """A loop whose every reconcile fails for want of descriptors (or crashes) only looks
    alive: no WATCHDOG=1, so systemd restarts it, and /healthz fails; a reconcile that
    finishes again brings both back."""
    rig = make_rig(
        {A: VFIO}, env={"WATCHDOG_USEC": "20000000"}, settings=LoopSettings(resync_interval=30)
    )
    rig.loop.start()
    assert rig.loop.alive()
    rig.notifications()
    rig.node.error = error
    rig.loop.request_resync()
    rig.step_until_reconciled()
    for _ in range(4):  # 40 s of waits, a failed resync at 30 s among them
        rig.loop.step()
        assert not rig.loop.alive(), "/healthz fails"
    assert ["WATCHDOG=1"] not in rig.notifications()
    assert len(rig.node.requests) == 3
    rig.node.error = None
    rig.loop.request_resync()
    rig.step_until_reconciled()
    assert rig.loop.alive()
    rig.loop.step()
    assert ["WATCHDOG=1"] in rig.notifications()


def test_the_loop_stays_alive_while_a_reconcile_runs(make_rig: Any) -> None:
    """/healthz is read from another thread: a reconcile under way is no failure."""
    rig = make_rig({A: VFIO})
    seen: list[bool] = []
    rig.node.during = lambda: seen.append(rig.loop.alive())
    rig.loop.start()
    rig.loop.request_resync()
    rig.step_until_reconciled()
    assert seen == [True, True]


def test_a_reconcile_refused_for_a_known_reason_is_progress(make_rig: Any) -> None:
    """Another run holding the node lock is the loop working as designed: pings go on."""
    rig = make_rig({A: VFIO}, env={"WATCHDOG_USEC": "20000000"})
    rig.node.error = VfioManagerError("another vfio-manager run holds the lock", remedy="wait")
    rig.loop.start()
    rig.notifications()
    rig.loop.step()
    assert rig.loop.alive()
    assert ["WATCHDOG=1"] in rig.notifications()


def test_the_heartbeat_covers_the_wait_and_expires_after(make_rig: Any) -> None:
    rig = make_rig({A: VFIO}, settings=LoopSettings(resync_interval=60))
    seen: list[tuple[float, bool]] = []

    class Watching:
        """Checks /healthz's answer while the loop sleeps, at and just past its promise."""

        def wait(self, fds: Any, timeout: float) -> set[int]:
            for offset in (0.0, timeout + 4.9, timeout + 5.1):
                rig.clock.now = start + offset
                seen.append((offset - timeout, rig.loop.alive()))
            rig.clock.now = start + timeout
            return set()

    rig.loop.waiter = Watching()
    rig.loop.start()
    start = rig.clock.now
    rig.loop.step()
    assert seen == [(-60.0, True), (pytest.approx(4.9), True), (pytest.approx(5.1), False)]


def test_summary_lines() -> None:
    from vfio_manager.daemon.reconciler import (
        FunctionState,
        HostReadiness,
        NodeView,
        ReconcileOutcome,
        ReconcileRequest,
    )

    view = NodeView().merge(
        ReconcileRequest(None),
        ReconcileOutcome(
            (FunctionState(A, State.CONVERGED), FunctionState(B, State.FAILED, "EINVAL")),
            HostReadiness(False, (IOMMU_OFF,)),
        ),
    )
    assert summary(NodeView()) == "starting: first reconcile under way"
    assert summary(view) == "host not ready (iommu); 1 converged, 1 failed"


# -- debounce windows, retry delays and flapping, on an injected clock -------------------------
def pci(action: str, bdf: str) -> Uevent:
    return Uevent(action, f"/devices/pci0000:00/{bdf}", "pci", bdf)


def batch(*events: Uevent, overflowed: bool = False) -> UeventBatch:
    return UeventBatch(tuple(events), overflowed=overflowed)


def test_a_burst_becomes_one_batch_when_the_window_closes() -> None:
    clock = FakeClock()
    debouncer = Debouncer(0.2, clock=clock)
    assert debouncer.due_at() is None
    debouncer.add(batch(pci("remove", "0000:03:00.0")))
    assert debouncer.due_at() == pytest.approx(clock.now + 0.2)
    clock.advance(0.1)
    debouncer.add(batch(pci("add", "0000:03:00.0"), pci("bind", "0000:03:00.1")))
    assert debouncer.take_if_due() is None
    clock.advance(0.1)
    assert debouncer.take_if_due() == Batch(frozenset({"0000:03:00.0", "0000:03:00.1"}))
    assert not debouncer.pending
    assert debouncer.take_if_due() is None


def test_the_window_does_not_slide_under_a_steady_trickle() -> None:
    clock = FakeClock()
    debouncer = Debouncer(0.2, clock=clock)
    debouncer.add(batch(pci("change", "0000:03:00.0")))
    opened = clock.now
    for _ in range(3):
        clock.advance(0.05)
        debouncer.add(batch(pci("change", "0000:03:00.0")))
    assert debouncer.due_at() == pytest.approx(opened + 0.2)


def test_driver_registration_and_overflow_ask_for_a_full_resync() -> None:
    clock = FakeClock()
    debouncer = Debouncer(0.2, clock=clock)
    debouncer.add(batch(Uevent("add", "/bus/pci/drivers/vfio-pci", "drivers")))
    clock.advance(0.2)
    assert debouncer.take_if_due() == Batch(frozenset(), full=True)
    debouncer.add(batch(overflowed=True))
    assert debouncer.pending
    assert debouncer.take().full


def test_an_empty_batch_opens_no_window() -> None:
    debouncer = Debouncer(0.2, clock=FakeClock())
    debouncer.add(batch())
    assert not debouncer.pending


def test_delays_double_up_to_the_cap_and_reset_on_success() -> None:
    clock = FakeClock()
    backoff = Backoff(1.0, 300.0, clock=clock)
    delays = [backoff.failed("0000:03:00.0", "EINVAL") for _ in range(11)]
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert backoff.failures("0000:03:00.0") == 11
    assert backoff.reason("0000:03:00.0") == "EINVAL"
    backoff.succeeded("0000:03:00.0")
    assert backoff.failures("0000:03:00.0") == 0
    assert backoff.failed("0000:03:00.0") == 1


def test_a_key_waits_until_its_retry_is_due() -> None:
    clock = FakeClock()
    backoff = Backoff(1.0, 300.0, clock=clock)
    backoff.failed("a")
    backoff.failed("b")
    backoff.failed("b")
    assert backoff.waiting() == {"a", "b"}
    assert backoff.next_retry_at() == pytest.approx(clock.now + 1)
    clock.advance(1)
    assert backoff.due() == {"a"}
    assert backoff.waiting() == {"b"}
    assert backoff.next_retry_at() == pytest.approx(clock.now)


def test_a_parked_key_sets_no_timer_but_keeps_its_count() -> None:
    clock = FakeClock()
    backoff = Backoff(clock=clock)
    backoff.failed("a")
    backoff.failed("a")
    backoff.park("a")
    assert backoff.next_retry_at() is None
    assert backoff.due() == frozenset()
    assert backoff.waiting() == frozenset()
    assert backoff.failed("a") == 4


def test_a_huge_failure_count_stays_at_the_cap() -> None:
    assert Backoff(1.0, 300.0).delay_after(10_000) == 300


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(0, 10)
    with pytest.raises(ValueError, match="initial"):
        Backoff(5, 1)


def test_moves_beyond_the_limit_within_the_window_are_flapping() -> None:
    clock = FakeClock()
    guard = FlapGuard(limit=3, window=60, clock=clock)
    assert [guard.moved("a") for _ in range(3)] == [False, False, False]
    assert guard.moved("a") is True
    assert guard.moved("b") is False
    clock.advance(61)
    assert guard.moved("a") is False, "old moves fall out of the window"


# -- the loop as a separate process: real signals, notify socket and uevent socket -------------
DAEMON = """
import sys
from vfio_manager.daemon.health import Notifier, ReadyFile
from vfio_manager.daemon.loop import LoopSettings, ReconcileLoop
from vfio_manager.daemon.reconciler import FunctionState, ReconcileOutcome, State
from vfio_manager.daemon.service import open_uevent_source

def reconcile(request):
    return ReconcileOutcome((FunctionState("0000:03:00.0", State.CONVERGED),))

loop = ReconcileLoop(
    reconcile,
    source=open_uevent_source(3600),
    settings=LoopSettings(resync_interval=3600),
    notifier=Notifier.from_environment(),
    ready_file=ReadyFile(sys.argv[1]),
    on_exit=lambda: print("on_exit ran", flush=True),
)
loop.install_signal_handlers()
sys.exit(loop.run())
"""


def test_sighup_resyncs_and_sigterm_exits_0_with_stopping(tmp_path: Path) -> None:
    systemd = Listener(str(tmp_path / "notify.sock"))
    ready = tmp_path / "ready"
    env = {**os.environ, "NOTIFY_SOCKET": systemd.env_value}
    process = subprocess.Popen(
        [sys.executable, "-c", DAEMON, str(ready)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert systemd.message() == ["STATUS=starting: first reconcile under way"]
        assert systemd.message() == ["READY=1", "STATUS=converged: 1 converged"]
        assert ready.exists()
        process.send_signal(signal.SIGHUP)
        assert systemd.message() == ["STATUS=converged: 1 converged"], "resynced at once"
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
        elapsed = time.monotonic() - sent
        assert process.returncode == 0, err
        assert systemd.message() == ["STOPPING=1", "STATUS=stopping (SIGTERM)"]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        systemd.close()
    assert "on_exit ran" in out
    assert not ready.exists()
    print(f"SIGTERM to exit: {elapsed * 1000:.0f} ms")


def test_the_loop_loads_neither_prometheus_nor_http_server() -> None:
    """Cold start: only --listen pays for prometheus-client and http.server."""
    probe = (
        "import sys\n"
        "import vfio_manager.daemon.loop, vfio_manager.safety.intents, "
        "vfio_manager.safety.lock, vfio_manager.kernel.uevents\n"
        "print(sorted(m for m in ('prometheus_client', 'http.server', 'structlog') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"

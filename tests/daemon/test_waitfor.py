"""status --check --wait: woken by uevents, slow poll as fallback, bounded by the deadline."""

from __future__ import annotations

import socket

import pytest

from tests.harness.uevents import datagram, pci_event
from tests.support import AdvancingWaiter, FakeClock
from vfio_manager.kernel.uevents import DatagramUeventSource, wait_for


class Condition:
    """True once ``bound`` is set; counts how often it was read (each read is a sysfs read)."""

    def __init__(self) -> None:
        self.bound = False
        self.reads = 0

    def __call__(self) -> bool:
        self.reads += 1
        return self.bound


def test_already_true_returns_at_once() -> None:
    clock = FakeClock()
    condition = Condition()
    condition.bound = True
    waiter = AdvancingWaiter(clock)
    assert wait_for(condition, timeout=300, source=None, clock=clock, waiter=waiter)
    assert waiter.timeouts == []


def test_a_bind_uevent_ends_the_wait_without_waiting_for_the_poll(
    uevent_pair: tuple[socket.socket, DatagramUeventSource],
) -> None:
    sender, source = uevent_pair
    clock = FakeClock()
    condition = Condition()
    sender.send(datagram("add", "/devices/virtual/net/x", [("SUBSYSTEM", "net")]))
    sender.send(pci_event("bind", "0000:03:00.0", driver="vfio-pci"))

    def bound_by_now() -> bool:  # false at the first read, true once the bind is in
        condition()
        return condition.reads > 1

    waiter = AdvancingWaiter(clock)
    assert wait_for(bound_by_now, timeout=300, source=source, clock=clock, waiter=waiter)
    assert clock.now == 1000.0, "no time passed: the event woke it, not the 5 s poll"
    assert condition.reads == 2


def test_irrelevant_datagrams_do_not_reread_sysfs(
    uevent_pair: tuple[socket.socket, DatagramUeventSource],
) -> None:
    sender, source = uevent_pair
    clock = FakeClock()
    condition = Condition()
    sender.send(datagram("add", "/devices/virtual/net/x", [("SUBSYSTEM", "net")]))
    waiter = AdvancingWaiter(clock)
    assert not wait_for(
        condition, timeout=10, source=source, clock=clock, waiter=waiter, poll_interval=5
    )
    assert condition.reads == 4, "first, two slow polls, last"


def test_without_uevents_it_polls_slowly_until_the_deadline() -> None:
    clock = FakeClock()
    condition = Condition()
    waiter = AdvancingWaiter(clock)
    assert not wait_for(
        condition, timeout=12, source=None, clock=clock, waiter=waiter, poll_interval=5
    )
    assert waiter.timeouts == [5, 5, 2]
    assert clock.now == pytest.approx(1012)


def test_the_slow_poll_catches_a_missed_event() -> None:
    clock = FakeClock()
    condition = Condition()

    class FlipsLater(AdvancingWaiter):
        def wait(self, fds: object, timeout: float) -> set[int]:
            if len(self.timeouts) == 1:
                condition.bound = True
            return super().wait(fds, timeout)  # type: ignore[arg-type]

    waiter = FlipsLater(clock)
    assert wait_for(condition, timeout=300, source=None, clock=clock, waiter=waiter)
    assert clock.now == pytest.approx(1010)

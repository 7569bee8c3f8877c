"""Debounce windows and retry delays, on an injected clock."""

from __future__ import annotations

import pytest

from tests.support import FakeClock
from vfio_manager.daemon.loop import Backoff, Batch, Debouncer, FlapGuard
from vfio_manager.kernel.uevents import Uevent, UeventBatch


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

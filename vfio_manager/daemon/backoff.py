"""Per-function retry delays, so a failing function is retried but never in a hot loop.

A function whose transition fails (the kernel refuses the probe, a VM holds the group past
the deadline) would otherwise be retried at every uevent, and its own failed attempt makes
uevents (unbind, bind back): a loop feeding itself. Each failure therefore parks the
function for a delay that doubles from ``initial`` (1 s) up to ``cap`` (5 min); success
resets it. While it waits, the loop passes it to the reconciler as ``skip`` (read and
reported, never written) and wakes up when its retry is due.

:class:`FlapGuard` covers the other loop: the daemon moves a function to vfio, something
else (a udev rule, another agent) moves it back, the daemon moves it again... Each move
succeeds, so no failure would slow it down. More than ``limit`` moves of one function within
``window`` seconds count as a failure, and backoff takes over.

Both take an injected clock; nothing here sleeps.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

DEFAULT_INITIAL = 1.0
DEFAULT_CAP = 300.0


@dataclass
class _Entry:
    failures: int
    retry_at: Optional[float]
    reason: Optional[str]


class Backoff:
    """Capped exponential delay per key (a BDF)."""

    def __init__(
        self,
        initial: float = DEFAULT_INITIAL,
        cap: float = DEFAULT_CAP,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError(f"backoff needs 0 < initial <= cap, got {initial} and {cap}")
        self.initial = initial
        self.cap = cap
        self.clock = clock
        self._entries: dict[str, _Entry] = {}

    def delay_after(self, failures: int) -> float:
        """The wait after the ``failures``-th failure in a row (1-based)."""
        exponent = min(max(failures, 1) - 1, 64)
        return float(min(self.initial * (2.0**exponent), self.cap))

    def failed(self, key: str, reason: Optional[str] = None) -> float:
        """Record a failure; returns the delay before the next attempt."""
        entry = self._entries.get(key)
        failures = entry.failures + 1 if entry is not None else 1
        delay = self.delay_after(failures)
        self._entries[key] = _Entry(failures, self.clock() + delay, reason)
        return delay

    def succeeded(self, key: str) -> None:
        self._entries.pop(key, None)

    forget = succeeded

    def park(self, key: str) -> None:
        """Keep the failure count but set no timer: the next event or resync tries again.

        For a function that was due but could not be attempted (the host is not ready, a
        process holds it): waking up for it again would be a loop that achieves nothing.
        """
        entry = self._entries.get(key)
        if entry is not None:
            entry.retry_at = None

    def keys(self) -> frozenset[str]:
        return frozenset(self._entries)

    def retry_now(self) -> None:
        """Make every waiting key due (an admin's SIGHUP: "I fixed it, try again")."""
        now = self.clock()
        for entry in self._entries.values():
            if entry.retry_at is not None:
                entry.retry_at = min(entry.retry_at, now)

    def failures(self, key: str) -> int:
        entry = self._entries.get(key)
        return entry.failures if entry is not None else 0

    def reason(self, key: str) -> Optional[str]:
        entry = self._entries.get(key)
        return entry.reason if entry is not None else None

    def retry_at(self, key: str) -> Optional[float]:
        entry = self._entries.get(key)
        return entry.retry_at if entry is not None else None

    def waiting(self) -> frozenset[str]:
        """Keys whose retry time has not come: not to be written yet."""
        now = self.clock()
        return frozenset(
            k for k, e in self._entries.items() if e.retry_at is not None and e.retry_at > now
        )

    def due(self) -> frozenset[str]:
        """Keys whose retry time has come."""
        now = self.clock()
        return frozenset(
            k for k, e in self._entries.items() if e.retry_at is not None and e.retry_at <= now
        )

    def next_retry_at(self) -> Optional[float]:
        """The earliest pending retry (clock time), for the loop's wakeup."""
        times = [e.retry_at for e in self._entries.values() if e.retry_at is not None]
        return min(times) if times else None


DEFAULT_FLAP_LIMIT = 5
DEFAULT_FLAP_WINDOW = 60.0


class FlapGuard:
    """Counts successful moves per key; more than ``limit`` within ``window`` is flapping."""

    def __init__(
        self,
        limit: int = DEFAULT_FLAP_LIMIT,
        window: float = DEFAULT_FLAP_WINDOW,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._moves: dict[str, deque[float]] = {}

    def moved(self, key: str) -> bool:
        """Record a move; True when ``key`` moved more than ``limit`` times in ``window``."""
        now = self.clock()
        moves = self._moves.setdefault(key, deque(maxlen=self.limit + 1))
        moves.append(now)
        while moves and moves[0] <= now - self.window:
            moves.popleft()
        return len(moves) > self.limit

    def forget(self, key: str) -> None:
        self._moves.pop(key, None)

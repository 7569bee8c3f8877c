"""Gather a burst of uevents into one reconcile.

One hot-plug or one ``bind`` from the admin is several uevents within milliseconds (remove,
add, bind; unbind, bind), and a rescan of a multi-function device is a dozen. Reconciling
after each would re-read sysfs and take the node lock a dozen times, and could act on a
half-finished kernel sequence. So the first event opens a window (200 ms by default), the
window does not slide (a steady trickle cannot postpone the reconcile forever, which keeps
the hot-add-to-bound latency bounded), and when it closes the loop gets the set of affected
functions, removed ones included (a removal must drop the function from the view).

A PCI driver appearing or leaving, or an overflow of the kernel's queue, cannot be mapped to
functions: the batch then asks for a full resync.

Pure bookkeeping with an injected clock; the waiting itself is the loop's ``poll``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from vfio_manager.daemon.uevents import UeventBatch

DEFAULT_WINDOW = 0.2


@dataclass(frozen=True)
class Batch:
    """The functions a window of events touched; ``full``: re-plan every function."""

    affected: frozenset[str]
    full: bool = False


class Debouncer:
    def __init__(
        self, window: float = DEFAULT_WINDOW, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = max(0.0, window)
        self.clock = clock
        self._affected: set[str] = set()
        self._full = False
        self._opened_at: Optional[float] = None

    def add(self, batch: UeventBatch) -> None:
        """Record what ``batch`` touched; the first event since the last take opens the window."""
        touched = False
        for event in batch.events:
            if event.bdf is not None:
                self._affected.add(event.bdf)
                touched = True
            elif event.relevant:
                self._full = touched = True
        if batch.overflowed:
            self._full = touched = True
        if touched and self._opened_at is None:
            self._opened_at = self.clock()

    @property
    def pending(self) -> bool:
        return self._opened_at is not None

    def due_at(self) -> Optional[float]:
        """When the open window closes (clock time), ``None`` when nothing is pending."""
        return None if self._opened_at is None else self._opened_at + self.window

    def take_if_due(self) -> Optional[Batch]:
        """The batch once its window has closed (and reset), else ``None``."""
        due = self.due_at()
        if due is None or self.clock() < due:
            return None
        return self.take()

    def take(self) -> Batch:
        """The batch now, window closed or not (a resync absorbs pending events)."""
        batch = Batch(frozenset(self._affected), self._full)
        self._affected.clear()
        self._full = False
        self._opened_at = None
        return batch

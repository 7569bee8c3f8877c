"""What the HTTP threads read: the last published node view and the loop's heartbeat.

The loop is single-threaded and owns every decision; the HTTP server answers from other
threads. They share exactly this object: the loop *publishes* an immutable
:class:`~vfio_manager.daemon.state.NodeView` after each reconcile and *beats* before each
wait (promising to come back within the wait's timeout) and before each reconcile (within
the stall budget). ``/healthz`` is then "the loop kept its last promise", which is true
while it idles for a minute between resyncs and false when it is wedged, without a timer
thread that would stay alive when the loop does not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from vfio_manager.daemon.state import NodeView


class StatusBoard:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._view = NodeView()
        self._alive_until = float("-inf")

    def publish(self, view: NodeView) -> None:
        with self._lock:
            self._view = view

    def view(self) -> NodeView:
        with self._lock:
            return self._view

    def beat(self, back_within: float) -> None:
        """The loop promises to beat again within ``back_within`` seconds."""
        with self._lock:
            self._alive_until = self.clock() + max(0.0, back_within)

    def alive(self) -> bool:
        with self._lock:
            return self.clock() <= self._alive_until

"""``status --check --wait SECONDS``: block until a condition holds, woken by uevents.

Why: the device plugin's init container polls ``check_bind --all`` every 2 s for up to 300 s.
Waiting on the kernel's uevents instead answers within milliseconds of the last ``bind`` and
costs nothing meanwhile. Uevents are only a hint (the condition is always re-read from
sysfs), so a lost or filtered event costs at most one slow poll (``poll_interval``, 5 s by
default), and without a uevent socket the wait degrades to that slow poll.

Shares :class:`~vfio_manager.daemon.uevents.UeventSource` and the loop's ``Waiter``, so it is
tested the same way: a socketpair of kernel-format datagrams and an advancing fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Optional

from vfio_manager.daemon.loop import PollWaiter, Waiter
from vfio_manager.daemon.uevents import UeventSource, open_kernel_uevents
from vfio_manager.log import get_logger

log = get_logger("vfio_manager.daemon.waitfor")

DEFAULT_POLL_INTERVAL = 5.0


def wait_for(
    condition: Callable[[], bool],
    *,
    timeout: float,
    source: Optional[UeventSource],
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
    waiter: Optional[Waiter] = None,
) -> bool:
    """True as soon as ``condition()`` holds; False when ``timeout`` seconds pass first.

    ``condition`` is evaluated at once, after every batch of relevant uevents, at least every
    ``poll_interval`` seconds, and one last time at the deadline.
    """
    wait = waiter if waiter is not None else PollWaiter()
    deadline = clock() + max(0.0, timeout)
    if condition():
        return True
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            return condition()
        fds = [source.fileno()] if source is not None else []
        ready = wait.wait(fds, min(remaining, poll_interval))
        if source is not None and source.fileno() in ready:
            batch = source.read_pending()
            if batch.closed:
                source = None  # fall back to the slow poll
            elif not batch.events and not batch.overflowed:
                continue  # nothing that could change the answer
        if condition():
            return True


def wait_with_uevents(
    condition: Callable[[], bool],
    *,
    timeout: float,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
) -> bool:
    """:func:`wait_for` on the kernel's uevent socket, opened before the first check (an
    event between the check and the open cannot be missed); without one, the slow poll."""
    try:
        source: Optional[UeventSource] = open_kernel_uevents()
    except OSError as exc:
        log.info(
            "uevents unavailable: polling instead",
            error=exc.strerror,
            poll_interval=poll_interval,
        )
        source = None
    try:
        return wait_for(condition, timeout=timeout, source=source, poll_interval=poll_interval)
    finally:
        if source is not None:
            source.close()


__all__ = ["DEFAULT_POLL_INTERVAL", "wait_for", "wait_with_uevents"]

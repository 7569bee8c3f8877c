"""Bounded kernel writes: a deadline for writes that can hang, retries for transient errnos.

A write to ``unbind`` runs the driver's remove() in the writer's context. When a VM or a
process still holds the device, vfio-pci (and many native drivers) wait for it to let go:
for a long time, or forever, and after a signal the wait becomes uninterruptible. The
scripts this project replaces hung there until the pod was killed. :func:`run_with_deadline`
runs such a write on a daemon thread and gives up waiting when the deadline passes, so the
command can report the function, the step and what holds it, and exit.

It cannot cancel the write: nothing can, the thread sits in the kernel (or waits for the
writer process that does, see :mod:`vfio_manager.safety.writer`). Writes still pending are
listed by :func:`pending_writes`; the node lock is not released while any is
(:func:`when_writes_return` tells it when they all have), so a next run cannot queue writes
behind the stuck one.

:func:`retry_transient` retries the errnos the kernel gives for a device that is not ready
yet (EBUSY, EAGAIN, ENODEV right after hot-plug or VF creation) with exponential backoff,
never past the deadline, and nothing else. tenacity is imported only once a first attempt
failed with one of those, so a run whose writes succeed at once does not pay for the import.
"""

from __future__ import annotations

import errno as errno_mod
import threading
import time
from collections.abc import Callable
from typing import Optional, TypeVar

from vfio_manager.errors import SysfsWriteError, VfioManagerError
from vfio_manager.log import get_logger

log = get_logger("vfio_manager.safety.deadline")

T = TypeVar("T")

DEFAULT_WRITE_TIMEOUT = 30.0
DEFAULT_LOCK_TIMEOUT = 60.0  # seconds a writing run waits for the node lock (--lock-timeout)
TRANSIENT_ERRNOS = frozenset({errno_mod.EBUSY, errno_mod.EAGAIN, errno_mod.ENODEV})
_INITIAL_BACKOFF = 0.05
_MAX_BACKOFF = 1.0

_pending_lock = threading.Lock()
_pending: dict[int, str] = {}  # id(thread) -> what
_on_all_returned: list[Callable[[], None]] = []


class DeadlineExceededError(VfioManagerError):
    """A write did not return in time; it is still pending in the kernel."""


def pending_writes() -> list[str]:
    """What the writes that missed their deadline were doing, for those still not returned."""
    with _pending_lock:
        return sorted(_pending.values())


def when_writes_return(callback: Callable[[], None]) -> bool:
    """Call ``callback`` once no write is pending: now (returns True) or, when some write
    missed its deadline and is still in the kernel, on the thread of the last one to return
    (returns False)."""
    with _pending_lock:
        if _pending:
            _on_all_returned.append(callback)
            return False
    callback()
    return True


def run_with_deadline(
    fn: Callable[[], T],
    *,
    timeout: float,
    what: str,
    bdf: Optional[str] = None,
    step: Optional[str] = None,
) -> T:
    """Run ``fn`` on a daemon thread; return its result, or raise what it raised.

    When ``timeout`` seconds pass first, raise :class:`DeadlineExceededError` (carrying
    ``bdf`` and ``step``) at once, without waiting for the thread: it stays blocked in the
    kernel, registered in :func:`pending_writes` until it returns. ``what`` names the write
    in messages ("unbind 0000:03:00.0 from rebellions").
    """
    done = threading.Event()
    outcome: list[T] = []
    failure: list[BaseException] = []

    def runner() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            failure.append(exc)
        finally:
            # Under the lock, so the waiter either sees ``done`` or registers us, never both.
            callbacks: list[Callable[[], None]] = []
            with _pending_lock:
                done.set()
                was_late = _pending.pop(id(threading.current_thread()), None) is not None
                if was_late and not _pending:
                    callbacks, _on_all_returned[:] = list(_on_all_returned), []
            for callback in callbacks:
                callback()
            if was_late:
                log.warning(
                    "late write returned",
                    what=what,
                    bdf=bdf,
                    step=step,
                    outcome="failed" if failure else "done",
                )

    thread = threading.Thread(target=runner, name=f"vfio-manager: {what}", daemon=True)
    thread.start()
    if not done.wait(max(0.0, timeout)):
        with _pending_lock:
            gave_up = not done.is_set()
            if gave_up:
                _pending[id(thread)] = what
        if gave_up:
            log.error("deadline exceeded", what=what, bdf=bdf, step=step, timeout=timeout)
            raise DeadlineExceededError(
                f"{what} did not return within {timeout:.2g}s; the write is still pending "
                "in the kernel",
                bdf=bdf,
                step=step,
                remedy="something still holds the device (a VM, or a process with its "
                "/dev node open): stop it and the write completes; raise --timeout if the "
                "driver is only slow. Do not retry before it completes: a second write "
                "queues behind the first",
            )
    if failure:
        raise failure[0]
    return outcome[0]


def is_transient(exc: BaseException) -> bool:
    """A kernel answer that may change on its own shortly: EBUSY, EAGAIN, ENODEV."""
    return isinstance(exc, SysfsWriteError) and exc.errno in TRANSIENT_ERRNOS


def retry_transient(
    fn: Callable[[], T],
    *,
    deadline_at: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    initial: float = _INITIAL_BACKOFF,
    maximum: float = _MAX_BACKOFF,
) -> T:
    """Call ``fn``; retry it on transient errnos with backoff while ``deadline_at`` allows.

    ``deadline_at`` is a ``clock()`` value. Waits double from ``initial`` up to ``maximum``;
    no wait runs past the deadline and no attempt starts after it, so the last error (the
    kernel's, unchanged) is raised in time. Any other exception is raised at once.

    The first attempt is made before tenacity is imported: nearly every write succeeds or
    fails for good at once, and the import is a tenth of a writing run's start-up.
    """

    def backoff(attempt: int) -> float:
        return float(min(maximum, initial * (2 ** min(attempt - 1, 32))))

    def exhausted(attempt: int) -> bool:
        """No wait after ``attempt`` may run past the deadline."""
        return clock() + backoff(attempt) >= deadline_at

    def announce(attempt: int, exc: Optional[BaseException]) -> None:
        log.info(
            "transient error, retrying",
            attempt=attempt,
            errno=errno_mod.errorcode.get(getattr(exc, "errno", 0) or 0),
            wait=backoff(attempt),
        )

    try:
        return fn()
    except Exception as exc:
        if not is_transient(exc) or exhausted(1):
            raise
        announce(1, exc)
    sleep(backoff(1))

    import tenacity  # attempts 2, 3, ...: tenacity counts them from 1

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        stop=lambda state: exhausted(state.attempt_number + 1),
        wait=lambda state: backoff(state.attempt_number + 1),
        sleep=sleep,
        before_sleep=lambda state: announce(
            state.attempt_number + 1,
            state.outcome.exception() if state.outcome is not None else None,
        ),
        reraise=True,
    )
    return retrying(fn)


def bounded_write(
    fn: Callable[[], T],
    *,
    deadline_at: float,
    what: str,
    bdf: Optional[str] = None,
    step: Optional[str] = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Both at once, as the engine wants them: each attempt off the main thread, with the
    time left until ``deadline_at``; transient errnos retried inside the same deadline.

    A hang ends the retries (:class:`DeadlineExceededError` is not transient).
    """

    def attempt() -> T:
        return run_with_deadline(
            fn, timeout=max(0.0, deadline_at - clock()), what=what, bdf=bdf, step=step
        )

    return retry_transient(attempt, deadline_at=deadline_at, clock=clock, sleep=sleep)


__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_WRITE_TIMEOUT",
    "TRANSIENT_ERRNOS",
    "DeadlineExceededError",
    "bounded_write",
    "is_transient",
    "pending_writes",
    "retry_transient",
    "run_with_deadline",
    "when_writes_return",
]

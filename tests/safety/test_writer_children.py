"""The writer's children, as real processes: one write at a time each, stuck ones set apart.

Functions move side by side, so writes arrive from several threads at once. Each must get a
child of its own; a child whose write is stuck in the kernel (here: a FIFO nobody reads,
as an unbind blocks while a VM holds the device) must never be handed another write, and
is named by ``stuck()`` when the run ends. Files in a temporary folder stand for sysfs.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vfio_manager.safety.writer import ChildWriter, Deadline, DeadlineExceededError, bounded

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def _until(condition: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Wait for a condition another thread makes true (bounded), not for a length of time."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_write_goes_on_while_another_child_is_stuck(tmp_path: Path) -> None:
    fifo = tmp_path / "unbind"
    os.mkfifo(fifo)
    plain = tmp_path / "drivers_probe"
    plain.write_text("")
    writer = ChildWriter()
    stuck_done = threading.Event()
    errors: list[BaseException] = []

    def stuck_write() -> None:
        try:
            writer(str(fifo), b"0000:01:00.0")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            stuck_done.set()

    thread = threading.Thread(target=stuck_write, daemon=True)
    thread.start()
    try:
        _until(lambda: bool(writer.stuck()), "the FIFO write to reach its child")
        # the FIFO's open blocks in the first child; this write needs a second one
        writer(str(plain), b"0000:02:00.0")
        assert plain.read_text() == "0000:02:00.0"
        writer(str(plain), b"0000:03:00.0")  # the idle second child is reused
        assert plain.read_text() == "0000:03:00.0"
        assert not stuck_done.is_set()
        (stuck,) = writer.stuck()
        assert "0000:01:00.0" in stuck.what
        assert str(fifo) in stuck.what
        assert stuck.pid != os.getpid()
    finally:
        with open(fifo, "rb") as reader:  # the "VM" lets go: the stuck write completes
            assert reader.read() == b"0000:01:00.0"
        assert stuck_done.wait(30), "the stuck write never returned"
        writer.close()
    assert errors == []
    assert writer.stuck() == []  # its late answer closed it


def test_writes_from_threads_at_once_each_arrive_once(tmp_path: Path) -> None:
    writer = ChildWriter()
    targets = [tmp_path / f"f{i}" for i in range(8)]
    for target in targets:
        target.write_text("")
    barrier = threading.Barrier(len(targets))

    def write(index: int) -> None:
        barrier.wait(timeout=30)
        writer(str(targets[index]), f"value {index}".encode())

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(targets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    writer.close()
    assert [t.read_text() for t in targets] == [f"value {i}" for i in range(len(targets))]
    assert writer.stuck() == []


def test_an_errno_comes_back_from_the_child(tmp_path: Path) -> None:
    writer = ChildWriter()
    try:
        with pytest.raises(OSError, match="No such file") as caught:
            writer(str(tmp_path / "missing" / "unbind"), b"0000:01:00.0")
        assert caught.value.errno == errno.ENOENT  # the answer, carried back from the child
    finally:
        writer.close()


def test_a_write_past_its_deadline_is_abandoned_to_its_child(tmp_path: Path) -> None:
    """The caller stops waiting at the deadline; the child stays until its write returns,
    then exits (its answer refused), and is no longer named as stuck."""
    fifo = tmp_path / "unbind"
    os.mkfifo(fifo)
    writer = ChildWriter()
    deadline = Deadline(time.monotonic() + 0.05, "unbind 0000:01:00.0", "0000:01:00.0", "unbind")
    with pytest.raises(DeadlineExceededError, match="did not return within"):
        bounded(lambda: writer(str(fifo), b"0000:01:00.0"), deadline)
    (stuck,) = writer.close()
    assert stuck.pid != os.getpid()
    with open(fifo, "rb") as reader:  # the "VM" lets go
        assert reader.read() == b"0000:01:00.0"
    _until(lambda: writer.stuck() == [], "the abandoned child to exit")

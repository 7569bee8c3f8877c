"""Files in the state directory that are not what their names say never hang a run.

A FIFO named like a journal record once hung every writing command forever, while it held
the node lock: the record was opened (blocking, for a FIFO without a writer) before it was
checked to be a regular file. These tests put real FIFOs, sockets and device nodes in a
real state directory (sysfs stays fake) and run the commands in-process under a time
bound: each must end with a report that names the bad file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.safety.realfs import (
    REAL_STATE_FILES,
    finishes,
    kind,
    mkchardev,
    mkfifo,
    mksocket,
    names,
    private_dir,
)
from tests.support import HOST, VFIO, Run, invoke, state
from vfio_manager.safety.journal import Journal
from vfio_manager.safety.lock import NodeLock, read_holder

HANG = 90.0  # seconds; a hang is forever, a run takes a few seconds on a loaded machine


def run(kernel: FakeKernel, state_dir: str, *args: str, fifos: tuple[str, ...] = ()) -> Run:
    return finishes(
        lambda: invoke(kernel, "--state-dir", state_dir, *args), within=HANG, fifos=fifos
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> str:
    return private_dir(str(tmp_path / "state"))


@pytest.mark.parametrize("fs", REAL_STATE_FILES, indirect=True)
@pytest.mark.parametrize("make", ["fifo", "socket", "chardev"])
def test_bind_all_sets_aside_a_special_file_named_like_a_transition_record(
    state_dir: str, fs: object, kernel: FakeKernel, make: str
) -> None:
    del fs
    (npu,) = npu_node(kernel, count=1)
    path = os.path.join(state_dir, f"journal-{npu}.json")
    sockets = []
    if make == "fifo":
        mkfifo(path)
    elif make == "socket":
        sockets.append(mksocket(path))
    else:
        mkchardev(path)
    try:
        result = run(kernel, state_dir, "bind-all", "--json", fifos=(path,))
    finally:
        for sock in sockets:
            sock.close()
    assert state(kernel, npu) == VFIO
    assert result.exit_code == 0, result.stdout
    notes = result.json()["notes"]
    assert any(f"{path}.corrupt" in note and "not a regular file" in note for note in notes), notes
    assert kind(f"{path}.corrupt") == make, "set aside as it was, never read"
    assert names(state_dir) == [f"journal-{npu}.json.corrupt", "lock", f"origin-{npu}.json"]


@pytest.mark.parametrize("fs", REAL_STATE_FILES, indirect=True)
def test_unbind_all_sets_aside_a_fifo_named_like_an_origin_record(
    state_dir: str, fs: object, kernel: FakeKernel
) -> None:
    del fs
    (npu,) = npu_node(kernel, count=1, driver="vfio-pci")
    path = mkfifo(os.path.join(state_dir, f"origin-{npu}.json"))
    result = run(kernel, state_dir, "unbind-all", fifos=(path,))
    assert result.exit_code == 0, result.stdout
    assert state(kernel, npu) == HOST
    assert f"{path}.corrupt" in result.stdout
    assert "modules.alias" in result.stdout  # where the native driver came from instead
    assert kind(f"{path}.corrupt") == "fifo"


@pytest.mark.parametrize("fs", REAL_STATE_FILES, indirect=True)
@pytest.mark.parametrize("command", ["bind", "unbind"])
def test_a_dry_run_reports_a_fifo_record_and_leaves_it(
    state_dir: str, fs: object, kernel: FakeKernel, command: str
) -> None:
    del fs
    (npu,) = npu_node(kernel, count=1)
    fifos = (
        mkfifo(os.path.join(state_dir, f"journal-{npu}.json")),
        mkfifo(os.path.join(state_dir, f"origin-{npu}.json")),
    )
    kernel.clear_writes()
    result = run(kernel, state_dir, command, npu, "--dry-run", "--json", fifos=fifos)
    assert result.exit_code == 0, result.stdout
    assert kernel.writes == []
    notes = json.dumps(result.json()["notes"])
    assert "not a regular file" in notes
    assert [kind(p) for p in fifos] == ["fifo", "fifo"], "a dry run moves nothing"


@pytest.mark.parametrize("fs", REAL_STATE_FILES, indirect=True)
def test_a_fifo_lock_file_is_refused_naming_it(
    state_dir: str, fs: object, kernel: FakeKernel
) -> None:
    del fs
    npu_node(kernel, count=1)
    lock = mkfifo(os.path.join(state_dir, "lock"))
    kernel.clear_writes()
    result = run(kernel, state_dir, "bind-all", fifos=(lock,))
    assert result.exit_code == 1
    assert kernel.writes == []
    remedy = result.stderr.split("remedy:", 1)[1]
    assert lock in remedy
    assert kind(lock) == "fifo", "the tool never removes the lock file"


# -- the modules on their own --------------------------------------------------------------


def test_reading_the_holder_of_a_fifo_lock_file_does_not_block(tmp_path: Path) -> None:
    state_dir = private_dir(str(tmp_path / "state"))
    lock = mkfifo(os.path.join(state_dir, "lock"))
    assert finishes(lambda: read_holder(lock), within=HANG, fifos=(lock,)) is None
    holder = finishes(
        lambda: read_holder(NodeLock(state_dir, timeout=0).path), within=HANG, fifos=(lock,)
    )
    assert holder is None


@pytest.mark.parametrize("record", ["journal", "origin"])
def test_the_journal_never_opens_a_fifo_for_reading(tmp_path: Path, record: str) -> None:
    bdf = "0000:03:00.0"
    state_dir = private_dir(str(tmp_path / "state"))
    path = mkfifo(os.path.join(state_dir, f"{record}-{bdf}.json"))
    readonly = Journal(state_dir, readonly=True)
    read = readonly.pending if record == "journal" else lambda: readonly.original(bdf)
    finishes(read, within=HANG, fifos=(path,))
    assert kind(path) == "fifo"
    journal = Journal(state_dir)
    if record == "journal":
        (entry,) = finishes(journal.pending, within=HANG, fifos=(path,))
        assert entry.problem is not None
        assert "not a regular file" in entry.problem
    else:
        assert finishes(lambda: journal.original(bdf), within=HANG, fifos=(path,)) is None
    assert kind(f"{path}.corrupt") == "fifo"

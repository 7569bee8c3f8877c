"""The state directory's gateway on real files: only regular files of ours are ever opened.

A FIFO, socket or device node named like a journal record or the lock never hangs a run
(which would hold the node lock for good): each command ends with a report naming the file.
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
from vfio_manager.safety.statedir import StateDir, UnsafeStateDirError, UnusableFile

HANG = 90.0  # seconds; a hang is forever, a run takes a few seconds on a loaded machine


@pytest.fixture
def state_dir(tmp_path: Path) -> str:
    return private_dir(str(tmp_path / "state"))


def read(state_dir: str, name: str, limit: int = 100, **kwargs: bool) -> bytes | None:
    with StateDir.open(state_dir) as state:
        return state.read(name, limit=limit, **kwargs)


@pytest.mark.parametrize("make", ["fifo", "socket", "chardev", "symlink", "dir"])
def test_read_refuses_anything_but_a_regular_file_without_blocking(
    state_dir: str, make: str
) -> None:
    path = os.path.join(state_dir, "record")
    sockets = []
    if make == "fifo":
        mkfifo(path)
    elif make == "socket":
        sockets.append(mksocket(path))
    elif make == "chardev":
        mkchardev(path)
    elif make == "symlink":
        os.symlink("/etc/hostname", path)
    else:
        os.mkdir(path)
    try:
        with pytest.raises(UnusableFile) as caught:
            finishes(lambda: read(state_dir, "record"), within=HANG, fifos=(path,))
    finally:
        for sock in sockets:
            sock.close()
    assert caught.value.problem.startswith("not a regular file")


def test_read_is_bounded(state_dir: str) -> None:
    Path(state_dir, "big").write_bytes(b"x" * 101)
    with pytest.raises(UnusableFile) as caught:
        read(state_dir, "big")
    assert "101 bytes" in caught.value.problem
    assert read(state_dir, "big", whole=False) == b"x" * 100
    Path(state_dir, "fits").write_bytes(b"y" * 100)
    assert read(state_dir, "fits") == b"y" * 100
    assert read(state_dir, "missing") is None


def test_read_refuses_a_file_owned_by_someone_else(state_dir: str) -> None:
    path = Path(state_dir, "theirs")
    path.write_text("{}")
    try:
        os.chown(path, os.geteuid() + 1, -1)
    except PermissionError:
        pytest.skip("chown is not permitted here")
    with pytest.raises(UnusableFile) as caught:
        read(state_dir, "theirs")
    assert "owned by UID" in caught.value.problem


def test_a_fifo_lock_file_is_refused_naming_it(state_dir: str) -> None:
    path = mkfifo(os.path.join(state_dir, "lock"))

    def open_lock() -> int:
        with StateDir.open(state_dir) as state:
            return state.open_lock_file("lock")

    with pytest.raises(UnsafeStateDirError) as caught:
        finishes(open_lock, within=HANG, fifos=(path,))
    assert "a FIFO" in caught.value.message
    assert caught.value.remedy is not None
    assert f"remove {path}" in caught.value.remedy
    assert kind(path) == "fifo"


def test_replace_swaps_a_fifo_for_the_record(state_dir: str) -> None:
    path = mkfifo(os.path.join(state_dir, "record"))
    with StateDir.open(state_dir) as state:
        finishes(lambda: state.replace("record", b"{}\n"), within=HANG, fifos=(path,))
        assert state.read("record", limit=10) == b"{}\n"
        assert state.names() == ["record"], "no temporary file left behind"


def test_set_aside_renames_whatever_is_there(state_dir: str) -> None:
    mkfifo(os.path.join(state_dir, "record"))
    Path(state_dir, "record.corrupt").write_text("an earlier one")
    with StateDir.open(state_dir) as state:
        assert state.set_aside("record", ".corrupt") == "record.1.corrupt"
    assert kind(os.path.join(state_dir, "record.1.corrupt")) == "fifo"


def test_a_missing_state_dir_is_not_created_for_reading(tmp_path: Path) -> None:
    assert StateDir.open_existing(str(tmp_path / "missing")) is None
    assert not (tmp_path / "missing").exists()


# -- the commands with special files in a real state directory (sysfs stays fake) --------------
def run(kernel: FakeKernel, state_dir: str, *args: str, fifos: tuple[str, ...] = ()) -> Run:
    return finishes(
        lambda: invoke(kernel, "--state-dir", state_dir, *args), within=HANG, fifos=fifos
    )


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
def test_a_fifo_lock_file_makes_a_run_fail_naming_it(
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


# -- the directories above the state directory: walked from /, no link followed -----------------
OTHER_UID = 4321


def _theirs(path: Path, mode: int = 0o755) -> Path:
    """A directory another user owns (needs root to make; skipped otherwise)."""
    path.mkdir(mode=mode)
    path.chmod(mode)
    try:
        os.chown(path, OTHER_UID, OTHER_UID)
    except PermissionError:
        pytest.skip("chown is not permitted here")
    return path


def test_a_state_dir_under_a_directory_another_user_owns_is_refused(tmp_path: Path) -> None:
    """That user could swap the state directory for a link to a decoy at any time."""
    theirs = _theirs(tmp_path / "theirs")
    state = theirs / "state"
    with pytest.raises(UnsafeStateDirError) as caught:
        StateDir.open(str(state))
    assert f"{theirs} is owned by UID {OTHER_UID}" in caught.value.message
    assert caught.value.remedy is not None
    assert "owned by root" in caught.value.remedy
    assert not state.exists(), "nothing is created below an unsafe directory"
    with pytest.raises(UnsafeStateDirError):
        NodeLock(str(state), timeout=0).acquire()


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_state_dir_under_a_directory_others_can_write_is_refused(
    tmp_path: Path, mode: int
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    private_dir(str(shared / "state"))  # even one that is fine itself
    with pytest.raises(UnsafeStateDirError) as caught:
        StateDir.open_existing(str(shared / "state"))
    assert f"{shared} is writable by group or others" in caught.value.message


def test_a_state_dir_reached_through_a_symlinked_parent_is_refused(tmp_path: Path) -> None:
    real = Path(private_dir(str(tmp_path / "real")))
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(UnsafeStateDirError) as caught:
        StateDir.open(str(tmp_path / "link" / "state"))
    assert f"{tmp_path / 'link'} is a symlink" in caught.value.message
    assert str(real / "state") in (caught.value.remedy or "")  # where it really is
    assert list(real.iterdir()) == [], "nothing created through the link"


def test_a_sticky_world_writable_parent_is_fine_below_a_directory_of_ours(
    tmp_path: Path,
) -> None:
    """Like /tmp: others may write there but cannot rename or remove what is ours."""
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    with StateDir.open(str(sticky / "ours" / "state")) as state:
        state.replace("record", b"{}\n")
    assert (sticky / "ours").stat().st_mode & 0o777 == 0o755 & ~_umask()
    assert (sticky / "ours" / "state").stat().st_mode & 0o777 == 0o700
    theirs = _theirs(sticky / "theirs")
    with pytest.raises(UnsafeStateDirError, match="owned by UID"):
        StateDir.open(str(theirs / "state"))


def test_the_default_state_dirs_parents_pass(tmp_path: Path) -> None:
    """/run (root's, 0755) and / above it: the check must let the default through."""
    for parent in ("/", "/run"):
        st = os.stat(parent)
        if st.st_uid != 0 or st.st_mode & 0o022:
            pytest.skip(f"{parent} is not root's and private on this machine")
    found = StateDir.open_existing("/run", uid=0)  # reads only
    assert found is not None
    found.close()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_opening_the_state_dir_leaves_no_descriptor_behind(tmp_path: Path) -> None:
    """The daemon opens it at every reconcile: a descriptor kept per open (a directory on
    the way, the state directory after close, one refused) would end in EMFILE."""
    state = tmp_path / "a" / "b" / "state"
    (tmp_path / "link").symlink_to(tmp_path / "a")

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = descriptors()
    for _ in range(50):
        with StateDir.open(str(state)) as opened:
            sub = opened.subdir("intent", create=True)
            assert sub is not None
            sub.close()
        assert StateDir.open_existing(str(tmp_path / "missing" / "state")) is None
        with pytest.raises(UnsafeStateDirError):
            StateDir.open_existing(str(tmp_path / "link" / "b" / "state"))
    assert descriptors() == before


def test_a_state_dir_another_run_makes_meanwhile_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs starting together: one finds no state directory, another makes it before the
    first looks again; the first uses it rather than failing with "No such file"."""
    path = tmp_path / "state"
    real_open = os.open

    def racing(name: str, flags: int, *args: object, **kwargs: object) -> int:
        if name == "state" and not path.exists():
            os.mkdir(path, 0o700)  # the other run, right after this one's open failed
            raise FileNotFoundError(2, "No such file or directory")
        return real_open(name, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", racing)
    with StateDir.open(str(path)) as state:
        assert state.path == str(path)

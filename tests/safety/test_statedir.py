"""The state directory's gateway on real files: only regular files of ours are ever opened."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.safety.realfs import finishes, kind, mkchardev, mkfifo, mksocket, private_dir
from vfio_manager.safety.statedir import StateDir, UnsafeStateDirError, UnusableFile

HANG = 90.0


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

"""Intents (functions an admin returned to the host), on a real temporary state directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vfio_manager.errors import UsageError
from vfio_manager.safety.intents import IntentStore
from vfio_manager.safety.statedir import UnsafeStateDirError


def test_intents_are_recorded_read_and_cleared(state_dir: Path) -> None:
    store = IntentStore(str(state_dir), wall_clock=lambda: 1714564800.0)
    assert store.read() == {}
    assert not (state_dir / "intent").exists(), "reading creates nothing"
    store.add("03:00.0", command="vfio-manager unbind 03:00.0")
    store.add("0000:5E:00.0", command="vfio-manager unbind-all")
    intents = store.read()
    assert sorted(intents) == ["0000:03:00.0", "0000:5e:00.0"]
    first = intents["0000:03:00.0"]
    assert (first.by, first.recorded_at, first.pid, first.problem) == (
        "vfio-manager unbind 03:00.0",
        "2024-05-01T12:00:00Z",
        os.getpid(),
        None,
    )
    assert "vfio-manager unbind 03:00.0" in first.describe()
    assert stat.S_IMODE((state_dir / "intent").stat().st_mode) == 0o700
    assert store.clear(["0000:03:00.0", "0000:07:00.0"]) == ["0000:03:00.0"]
    assert store.bdfs() == {"0000:5e:00.0"}


def test_a_malformed_bdf_is_refused_before_any_path_is_built(state_dir: Path) -> None:
    with pytest.raises(UsageError):
        IntentStore(str(state_dir)).add("../../etc/passwd")


def test_damaged_intent_files_still_count_and_never_hang(state_dir: Path, tmp_path: Path) -> None:
    store = IntentStore(str(state_dir))
    store.add("0000:01:00.0")
    intent_dir = state_dir / "intent"
    os.mkfifo(intent_dir / "0000:02:00.0")
    (intent_dir / "0000:03:00.0").symlink_to(tmp_path / "elsewhere")
    (intent_dir / "0000:04:00.0").write_bytes(b"\xff not json")
    (intent_dir / "0000:05:00.0").write_bytes(b"x" * 100_000)
    (intent_dir / "0000:06:00.0").write_text("[1, 2]")
    (intent_dir / "0000:07:00.0").mkdir()
    (intent_dir / "not-a-bdf").write_text("{}")
    (intent_dir / "3:0.0").write_text("{}")
    intents = store.read()
    assert sorted(intents) == [f"0000:0{n}:00.0" for n in range(1, 8)]
    problems = {b: i.problem for b, i in intents.items()}
    assert problems["0000:01:00.0"] is None
    assert "FIFO" in str(problems["0000:02:00.0"])
    assert "symlink" in str(problems["0000:03:00.0"])
    assert "JSON" in str(problems["0000:04:00.0"])
    assert "100000 bytes" in str(problems["0000:05:00.0"])
    assert "object" in str(problems["0000:06:00.0"])
    assert "directory" in str(problems["0000:07:00.0"])


def test_an_intent_directory_that_is_a_symlink_is_refused(state_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (state_dir / "intent").symlink_to(elsewhere)
    store = IntentStore(str(state_dir))
    with pytest.raises(UnsafeStateDirError):
        store.read()
    with pytest.raises(UnsafeStateDirError):
        store.add("0000:03:00.0")
    assert list(elsewhere.iterdir()) == []


def test_an_intent_directory_writable_by_others_is_refused(state_dir: Path) -> None:
    (state_dir / "intent").mkdir()
    (state_dir / "intent").chmod(0o777)
    with pytest.raises(UnsafeStateDirError, match="refusing"):
        IntentStore(str(state_dir)).read()

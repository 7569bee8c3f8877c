"""Ready file, intents and the daemon's presence, on a real temporary state directory."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.support import FakeClock
from vfio_manager.daemon.health import ReadyFile, default_ready_path
from vfio_manager.errors import UsageError
from vfio_manager.safety.intents import IntentStore
from vfio_manager.safety.lock import (
    DaemonPresence,
    DaemonRunningError,
    daemon_running,
)
from vfio_manager.safety.statedir import UnsafeStateDirError

COUNTS = {"converged": 2, "pending": 0, "held": 0, "excluded": 1, "failed": 0, "intent-host": 0}


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


# -- ready file ------------------------------------------------------------------------------
def test_the_ready_file_exists_exactly_while_converged(state_dir: Path) -> None:
    ready = ReadyFile(default_ready_path(str(state_dir)), wall_clock=lambda: 1714564800.0)
    path = state_dir / "ready"
    ready.update(True, COUNTS)
    doc = json.loads(path.read_text())
    assert doc == {
        "converged": True,
        "since": "2024-05-01T12:00:00Z",
        "pid": os.getpid(),
        "counts": COUNTS,
    }
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    ready.update(False, {**COUNTS, "pending": 1})
    assert not path.exists()
    ready.update(True, COUNTS)
    ready.remove()
    assert not path.exists()
    ready.remove()  # absent: no error


def test_the_ready_file_is_rewritten_only_when_counts_change(state_dir: Path) -> None:
    ready = ReadyFile(str(state_dir / "ready"))
    path = state_dir / "ready"
    ready.update(True, COUNTS)
    inode = path.stat().st_ino
    ready.update(True, COUNTS)
    assert path.stat().st_ino == inode, "same content: no write"
    ready.update(True, {**COUNTS, "converged": 3})
    assert path.stat().st_ino != inode, "a rename replaced it"
    assert json.loads(path.read_text())["counts"]["converged"] == 3
    path.unlink()
    ready.update(True, {**COUNTS, "converged": 3})
    assert path.exists(), "removed behind our back: written again"


def test_a_symlink_at_the_ready_path_is_replaced_not_followed(
    state_dir: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (state_dir / "ready").symlink_to(victim)
    ReadyFile(str(state_dir / "ready")).update(True, COUNTS)
    assert victim.read_text() == "precious"
    assert not (state_dir / "ready").is_symlink()
    (state_dir / "ready").unlink()
    (state_dir / "ready").symlink_to(victim)
    ReadyFile(str(state_dir / "ready")).remove()
    assert victim.exists()
    assert not (state_dir / "ready").exists()


def test_an_unwritable_ready_file_is_logged_once_and_never_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vfio_manager.daemon import health

    errors: list[str] = []
    monkeypatch.setattr(health.log, "error", lambda event, **kw: errors.append(event))
    ready = ReadyFile(str(tmp_path / "missing-dir" / "ready"))
    ready.update(True, COUNTS)
    ready.update(True, {**COUNTS, "converged": 5})
    assert errors == ["ready file not written"]


# -- intents -----------------------------------------------------------------------------------
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


# -- presence ----------------------------------------------------------------------------------
def test_daemon_running_follows_the_presence_lock(state_dir: Path) -> None:
    assert not daemon_running(str(state_dir))
    with DaemonPresence(str(state_dir)):
        assert daemon_running(str(state_dir))
        assert (state_dir / "daemon").read_text().startswith(f"{os.getpid()}\n")
    assert not daemon_running(str(state_dir))
    assert (state_dir / "daemon").read_text() == ""


def test_a_second_daemon_waits_then_names_the_first(state_dir: Path) -> None:
    clock = FakeClock()
    slept = clock.sleeps
    with DaemonPresence(str(state_dir)):
        second = DaemonPresence(str(state_dir), timeout=2.0, clock=clock, sleep=clock.sleep)
        with pytest.raises(DaemonRunningError, match=f"PID {os.getpid()}"):
            second.acquire()
    assert sum(slept) == pytest.approx(2.0)
    second.acquire()
    second.release()


def test_a_fifo_at_the_presence_path_is_not_a_daemon(state_dir: Path) -> None:
    os.mkfifo(state_dir / "daemon")
    assert not daemon_running(str(state_dir))
    with pytest.raises(UnsafeStateDirError):
        DaemonPresence(str(state_dir)).acquire()

"""Ctrl-C and SIGTERM during a writing run, as real signals to a separate process.

The run (``tests/pipeline/interrupted.py``: the CLI on the fake kernel in a process of its
own) signals itself right after a write has reached the kernel, so the signal lands inside a
function's transition, on the main thread when one IOMMU group moves. The function in flight
must be finished (never left without a driver), no other started, the report printed (with
``--json``, exactly one document) and the exit code 128 + the signal's number. A signal
while the run waits for the node lock ends the wait with an error document, nothing written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

from vfio_manager.safety.intents import IntentStore
from vfio_manager.safety.journal import Journal
from vfio_manager.safety.lock import DaemonPresence, NodeLock

FIRST, SECOND = "0000:01:00.0", "0000:02:00.0"  # npu_node's first two NPUs
HOST, VFIO = ["rebellions", None], ["vfio-pci", "vfio-pci"]
SIGNALS = [signal.SIGINT, signal.SIGTERM]
REPO = Path(__file__).parents[2]


class Finished:
    def __init__(self, process: subprocess.Popen[str], timeout: float = 120) -> None:
        self.stdout, stderr = process.communicate(timeout=timeout)
        self.code = process.returncode
        lines = stderr.splitlines()
        self.log = [json.loads(line) for line in lines if line.startswith("{")]
        states = [line for line in lines if line.startswith("STATE ")]
        self.state: Optional[dict[str, Any]] = json.loads(states[-1][6:]) if states else None
        self.stderr = stderr

    def document(self) -> dict[str, Any]:
        """stdout is exactly one JSON document."""
        doc: dict[str, Any] = json.loads(self.stdout)
        return doc

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"


def start(
    state: Path,
    *args: str,
    count: int = 1,
    driver: str = "rebellions",
    sig: Optional[signal.Signals] = None,
    after: str = "",
) -> subprocess.Popen[str]:
    setup = {
        "count": count,
        "driver": driver,
        "state": str(state),
        "signal": sig.name if sig else None,
        "after": after,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("VFIO_MANAGER_")}
    argv = [sys.executable, "-m", "tests.pipeline.interrupted", json.dumps(setup), "--"]
    return subprocess.Popen(
        [*argv, "--writer", "thread", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_inside_a_one_group_bind_lets_it_finish(state: Path, sig: signal.Signals) -> None:
    """The function's unbind from its native driver has just run: without the probe that
    follows it would be left with no driver and the override on vfio-pci."""
    run = Finished(
        start(state, "bind", FIRST, "--json", sig=sig, after="bus/pci/drivers/rebellions/unbind")
    )
    assert run.code == 128 + sig, run
    assert run.state == {FIRST: VFIO}, run
    doc = run.document()
    (outcome,) = doc["functions"]
    assert (outcome["outcome"], outcome["driver"], outcome["writes"]) == ("changed", "vfio-pci", 3)
    assert any(f"interrupted by {sig.name}" in note for note in doc["notes"]), doc
    assert doc["ok"] is False  # the exit code is not 0
    assert Journal(str(state)).pending() == []


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_inside_a_return_finishes_it_and_starts_no_other(
    state: Path, sig: signal.Signals
) -> None:
    """One lane (--parallel 1): the first function is finished, the second never started."""
    run = Finished(
        start(
            state,
            "--parallel",
            "1",
            "unbind-all",
            "--json",
            count=2,
            driver="vfio-pci",
            sig=sig,
            after="bus/pci/drivers/vfio-pci/unbind",
        )
    )
    assert run.code == 128 + sig, run
    assert run.state == {FIRST: HOST, SECOND: VFIO}, run
    report = {f["bdf"]: f for f in run.document()["functions"]}
    assert report[FIRST]["outcome"] == "changed"
    assert report[SECOND]["outcome"] == "failed"
    assert report[SECOND]["step"] == "interrupted"
    assert report[SECOND]["writes"] == 0
    assert Journal(str(state)).pending() == []


def test_a_signal_inside_a_run_prints_its_text_report(state: Path) -> None:
    run = Finished(
        start(state, "bind", FIRST, sig=signal.SIGINT, after="bus/pci/drivers/rebellions/unbind")
    )
    assert run.code == 130, run
    assert f"{FIRST}  changed" in run.stdout, run
    assert "interrupted by SIGINT" in run.stdout


def _started_waiting(process: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """Read the log until the run says it waits for the node lock."""
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        if line.startswith("{"):
            seen.append(json.loads(line))
            if seen[-1].get("event") == "waiting for the lock":
                return seen
    raise AssertionError(f"the run ended without waiting for the lock: {seen}")


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_while_waiting_for_the_lock_prints_an_error_document(
    state: Path, sig: signal.Signals
) -> None:
    with NodeLock(str(state), timeout=0):  # another run holds the node
        process = start(state, "--lock-timeout", "60", "bind-all", "--json")
        _started_waiting(process)
        process.send_signal(sig)
        stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 128 + sig, stdout
    error = json.loads(stdout)["error"]
    assert error["code"] == 128 + sig
    assert f"interrupted by {sig.name}" in error["message"]
    assert "nothing was written" in error["message"]


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_an_unbind_interrupted_while_waiting_for_the_lock_leaves_no_intent(
    state: Path, sig: signal.Signals
) -> None:
    """With a daemon up, an unbind records the admin's intent; it does so only once it holds
    the node lock, so one stopped while waiting leaves the daemon managing the function."""
    with DaemonPresence(str(state)), NodeLock(str(state), timeout=0):
        process = start(state, "--lock-timeout", "60", "unbind", FIRST, driver="vfio-pci")
        _started_waiting(process)
        process.send_signal(sig)
        process.communicate(timeout=60)
        assert process.returncode == 128 + sig
        assert IntentStore(str(state)).read() == {}


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_during_modprobe_ends_the_run_as_interrupted(
    state: Path, sig: signal.Signals
) -> None:
    """Ctrl-C reaches modprobe too and kills it: the run says it was interrupted (128 + the
    signal), not that the module failed to load (3), and writes nothing."""
    run = Finished(start(state, "bind-all", "--json", sig=sig, after="modprobe"))
    assert run.code == 128 + sig, run
    assert run.state == {FIRST: HOST}, run
    error = run.document()["error"]
    assert f"interrupted by {sig.name} while loading modules" in error["message"], error
    assert "nothing was written" in error["message"]

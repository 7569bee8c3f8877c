"""SIGINT and SIGTERM inside a one-group bind on the real kernel, as separate processes.

One IOMMU group moves on the run's main thread, so the signal lands inside the function's
transition. To land it there every time, the run's writer child (the process that makes the
sysfs writes) sends it to the run as it opens ``drivers/e1000e/unbind``: the run is then
waiting for that write's answer, with the override already on vfio-pci. Without the function
finished the e1000e would be left with no driver. The run must finish it, print its report
(one JSON document) and exit 128 + the signal's number.
"""

import json
import signal
import subprocess
import sys
from pathlib import Path

import guest
import pytest
from conftest import Baseline
from guest import E1000E, SEL_E1000E

from vfio_manager.safety.journal import Journal

# the CLI, with an audit hook that signals it from its writer child at the unbind's open
SIGNALLED_RUN = r"""
import os, signal, sys
run, sig = os.getpid(), signal.Signals[sys.argv[1]]

def hook(event, args):
    if event == "open" and os.getpid() != run and str(args[0]).endswith("/drivers/e1000e/unbind"):
        os.kill(run, sig)

sys.addaudithook(hook)
from vfio_manager.cli.main import main
main(sys.argv[2:])
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_inside_a_one_group_bind_lets_it_finish(
    baseline: Baseline, tmp_path: Path, sig: signal.Signals
) -> None:
    state = str(tmp_path / "state")
    argv = ["--state-dir", state, "bind", E1000E, *SEL_E1000E, "--json"]
    run = subprocess.run(
        [sys.executable, "-c", SIGNALLED_RUN, sig.name, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    text = f"exit {run.returncode}\n{run.stdout}\n{run.stderr}"
    state_now = (guest.driver(E1000E), guest.override(E1000E))
    assert state_now == ("vfio-pci", "vfio-pci"), f"left {state_now}\n{text}"
    assert run.returncode == 128 + sig, text
    assert guest.vfio_dev(E1000E) is not None
    doc = json.loads(run.stdout)  # exactly one document
    (outcome,) = doc["functions"]
    assert (outcome["outcome"], outcome["driver"], outcome["writes"]) == ("changed", "vfio-pci", 3)
    assert any(f"interrupted by {sig.name}" in note for note in doc["notes"]), doc
    assert doc["ok"] is False  # the exit code is not 0
    assert Journal(state).pending() == []

"""The `vfio-manage` drop-in (for the operator's vfio-manage.sh) on the real kernel.

Run as the operator runs the script: a separate process, selection from the environment,
the script's commands and options. The e1000e (03:00.0) plays the NPU. `bind -a` moves it
with the careful order, `check_bind -a` (the device plugin's checker) exits 0 only then, a
second `bind -a` writes nothing, and `cleanup -a` returns it to its native driver (the
script left it driverless).
"""

import os
import subprocess
import sys
from pathlib import Path

import guest
from conftest import Baseline
from guest import E1000E

ENV = {
    "VFIO_MANAGER_VENDOR": "0x8086",
    "VFIO_MANAGER_CLASS": "0x020000",
    "VFIO_MANAGER_DEVICE_ID": "0x10d3",
}


def _manage(state: str, *argv: str) -> "subprocess.CompletedProcess[str]":
    env = {k: v for k, v in os.environ.items() if not k.startswith("VFIO_MANAGER_")}
    env.update(ENV, VFIO_MANAGER_STATE_DIR=state)
    return subprocess.run(
        [sys.executable, "-c", "from vfio_manager.cli.compat import main; main()", *argv],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )


def test_the_drop_in_binds_checks_and_cleans_up_on_the_real_kernel(
    baseline: Baseline, tmp_path: Path
) -> None:
    state = str(tmp_path / "state")
    native = baseline[E1000E]
    assert native is not None

    before = _manage(state, "check_bind", "--all")
    assert before.returncode == 1, before.stdout + before.stderr
    assert f"Device {E1000E} is not bound to vfio-pci" in before.stdout

    bound = _manage(state, "bind", "-a")
    assert bound.returncode == 0, bound.stdout + bound.stderr
    assert guest.state([E1000E]) == {E1000E: ("vfio-pci", "vfio-pci")}

    checked = _manage(state, "check_bind", "-a")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"Device {E1000E} is bound to vfio-pci" in checked.stdout

    again = _manage(state, "bind", "-d", E1000E)
    assert again.returncode == 0, again.stdout + again.stderr
    assert guest.state([E1000E]) == {E1000E: ("vfio-pci", "vfio-pci")}

    cleaned = _manage(state, "cleanup", "--all")
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert guest.state([E1000E]) == {E1000E: (native, None)}

    usage = _manage(state, "bind", "--no-such-option")
    assert usage.returncode == 2
    assert guest.state([E1000E]) == {E1000E: (native, None)}

"""``vfio-manager`` on the fake kernel as a process of its own, for the tests that signal it.

Run as ``python -m tests.pipeline.interrupted SETUP -- ARGS...``. SETUP is JSON:
``{"count": N, "driver": "rebellions"|"vfio-pci", "state": DIR, "signal": "SIGINT"|"SIGTERM"|
null, "after": PATH|"modprobe"}``: an NPU node of N functions on ``driver``, each in its own
IOMMU group;
the CLI's state directory is the real ``DIR`` (so its flocks are seen by other processes),
sysfs is fake. With ``signal``, the process sends it to itself right after the first write
to ``PATH`` (relative to sysfs, e.g. ``bus/pci/drivers/rebellions/unbind``) has run in the
kernel: the run is then in the middle of that function, waiting for the write's answer.
``"after": "modprobe"``: the vfio modules are not loaded, and the signal comes while
modprobe loads them, killing it as Ctrl-C would.

The CLI's stdout and exit code are the process's; when the CLI has returned, the last line
on stderr is ``STATE {json}``: each function's ``[driver, override]`` as the kernel has it.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import signal
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Union

from pyfakefs.fake_filesystem_unittest import Patcher

import vfio_manager

# the state directory's modules use the real file system; sysfs, /dev and /proc stay fake
REAL_STATE_MODULES: list[Union[str, ModuleType]] = [
    "vfio_manager.safety.statedir",
    "vfio_manager.safety.lock",
    "vfio_manager.safety.journal",
    "vfio_manager.safety.intents",
]


def main(setup: dict[str, object], args: list[str]) -> int:
    from tests.harness import FakeKernel
    from tests.harness.topologies import npu_node
    from tests.support import root_args
    from vfio_manager.cli.main import main as cli

    for module in pkgutil.walk_packages(vfio_manager.__path__, "vfio_manager."):
        if not module.name.endswith(".__main__"):  # imported before pyfakefs starts
            importlib.import_module(module.name)
    with Patcher(additional_skip_names=REAL_STATE_MODULES) as patcher:
        assert patcher.fs is not None
        kernel = FakeKernel(patcher.fs)
        try:
            bdfs = npu_node(
                kernel,
                count=int(str(setup["count"])),
                driver=str(setup["driver"]),
                vfio_loaded=setup.get("after") != "modprobe",
            )
            if setup.get("signal"):
                sig = signal.Signals[str(setup["signal"])]
                if setup["after"] == "modprobe":
                    _signalled_modprobe(sig)
                else:
                    kernel.after_write(str(setup["after"]), lambda: os.kill(os.getpid(), sig))
            argv = [*root_args(kernel), "--state-dir", str(setup["state"]), *args]
            try:
                cli(argv)
                code = 0
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else 1
            state = {bdf: [kernel.driver_of(bdf), kernel.override_of(bdf)] for bdf in bdfs}
        finally:
            kernel.close()
    sys.stdout.flush()
    print("STATE " + json.dumps(state), file=sys.stderr, flush=True)
    return code


def _signalled_modprobe(sig: signal.Signals) -> None:
    """modprobe as Ctrl-C leaves it: the signal reaches the run and kills modprobe too (one
    process group), which then reports death by that signal (``-sig``, as subprocess does)."""
    from vfio_manager.host import modules

    def killed(argv: Sequence[str]) -> modules.RunResult:
        os.kill(os.getpid(), sig)
        return modules.RunResult(-int(sig), "", "")

    modules.subprocess_runner = killed


if __name__ == "__main__":
    separator = sys.argv.index("--")
    sys.exit(main(json.loads(sys.argv[1]), sys.argv[separator + 1 :]))

"""Return to host with slow native probes: the fake kernel of tests/harness, plus a delay.

Usage: ``python -m benchmarks.slowprobe --functions 8 --delay 2.0`` prints one JSON object:
the wall time of ``vfio-manager unbind-all`` over ``functions`` NPUs on vfio-pci whose
native driver (``rebellions``) takes ``delay`` seconds to probe each function, the exit
status, and the driver of every function afterwards.

A real driver's probe (firmware load, link training) can take seconds; the kernel holds
only that device's lock meanwhile, so probes of different functions can overlap when the
writes are issued side by side. The harness has no probe delay, and its stores run under
one model-wide lock, so :class:`SlowProbeKernel` sleeps BEFORE taking that lock: the
delay of one function never holds back another. (Better in tests/harness itself: a
``k.delay_probe(driver, seconds)`` fault next to ``fail_probe``, applied outside the lock.)

This is the one benchmark that runs the product in-process (pyfakefs needs it); it enters
through ``vfio_manager.cli.main``, the console script's entry point, and nothing deeper.
Run it as its own process: pyfakefs patches ``os`` for everything imported while it is on.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
from typing import Any

from click.testing import CliRunner
from pyfakefs.fake_filesystem import FakeFilesystem
from pyfakefs.fake_filesystem_unittest import Patcher

import vfio_manager
from tests.harness import FakeKernel
from tests.harness.kernel import matching, routes
from tests.harness.kernel.state import KernelState
from tests.harness.topologies import npu_node
from vfio_manager.cli.main import main as cli_main

SLOW_DRIVER = "rebellions"


def _device_name(data: bytes) -> str:
    """The BDF a bus store receives (cut at NUL, one trailing newline ignored)."""
    text = data.split(b"\0", 1)[0]
    return text[:-1].decode() if text.endswith(b"\n") else text.decode()


class SlowProbeKernel(FakeKernel):
    """A :class:`FakeKernel` whose ``slow_drivers`` take ``probe_delay`` seconds to probe.

    The delay wraps the harness's rules for ``drivers_probe`` and ``drivers/NAME/bind`` in
    its route tables (tests/harness/kernel/routes.py) for as long as the kernel lives.
    """

    def __init__(
        self, fs: FakeFilesystem, *, probe_delay: float, slow_drivers: tuple[str, ...], **kw: Any
    ) -> None:
        self.probe_delay = probe_delay
        self.slow_drivers = frozenset(slow_drivers)
        self.probes: list[tuple[str, float, float]] = []  # (bdf, start, end), monotonic
        super().__init__(fs, **kw)
        self._routes = (routes.BUS_FILES["drivers_probe"], routes.DRIVER_FILES["bind"])
        probe, bind = self._routes

        def slow_probe(s: KernelState, data: bytes) -> None:
            self._delay(s, _device_name(data), self.slow_drivers)
            probe(s, data)

        def slow_bind(s: KernelState, driver: str, data: bytes) -> None:
            if driver in self.slow_drivers:
                self._delay(s, _device_name(data), frozenset({driver}))
            bind(s, driver, data)

        routes.BUS_FILES["drivers_probe"] = slow_probe
        routes.DRIVER_FILES["bind"] = slow_bind

    def close(self) -> None:
        routes.BUS_FILES["drivers_probe"], routes.DRIVER_FILES["bind"] = self._routes
        super().close()

    @staticmethod
    def _would_probe_slowly(s: KernelState, bdf: str, drivers: frozenset[str]) -> bool:
        with s.lock:
            fn = s.function_table.get(bdf)
            if fn is None or fn.driver is not None:
                return False
            return any(
                matching.match(drv, fn) is not None
                for drv in s.driver_table.values()
                if drv.name in drivers
            )

    def _delay(self, s: KernelState, bdf: str, drivers: frozenset[str]) -> None:
        if self._would_probe_slowly(s, bdf, drivers):
            start = time.monotonic()
            time.sleep(self.probe_delay)  # outside the model lock, as a per-device lock would be
            self.probes.append((bdf, start, time.monotonic()))


def _import_product() -> None:
    """Import every product module before pyfakefs starts (it patches modules it sees)."""
    for module in pkgutil.walk_packages(vfio_manager.__path__, "vfio_manager."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)


def _invoke(k: FakeKernel, *args: str) -> tuple[int, str]:
    argv = [
        "--sysfs-root",
        k.sys_root,
        "--dev-root",
        k.dev_root,
        "--host-root",
        k.host_root,
        "--state-dir",
        f"{k.host_root}/run/vfio-manager",
        "--proc-root",
        k.proc_root,
        "--log-format",
        "json",
        "--writer",
        "thread",
        *args,
    ]  # fmt: skip (in-process fake kernel: a forked writer would write to its own copy)
    with CliRunner().isolation() as streams:
        try:
            cli_main(argv)
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        stdout = streams[0].getvalue().decode("utf-8", "replace")
    return code, stdout


def measure(functions: int, delay: float) -> dict[str, Any]:
    _import_product()
    with Patcher() as patcher:
        assert patcher.fs is not None
        k = SlowProbeKernel(patcher.fs, probe_delay=delay, slow_drivers=(SLOW_DRIVER,))
        try:
            bdfs = npu_node(k, count=functions, driver="vfio-pci")
            start = time.monotonic()
            code, stdout = _invoke(k, "unbind-all")
            seconds = time.monotonic() - start
            drivers = {bdf: k.driver_of(bdf) for bdf in bdfs}
            probes = [(bdf, a - start, b - start) for bdf, a, b in k.probes]
        finally:
            k.close()
    overlap = max((b for _, _, b in probes), default=0.0) - min(
        (a for _, a, _ in probes), default=0.0
    )
    return {
        "functions": functions,
        "delay": delay,
        "seconds": seconds,
        "exit_code": code,
        "drivers": drivers,
        "slow_probes": len(probes),
        "probe_span": overlap,
        "stdout": stdout,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--functions", type=int, default=8)
    parser.add_argument("--delay", type=float, default=2.0)
    args = parser.parse_args()
    json.dump(measure(args.functions, args.delay), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

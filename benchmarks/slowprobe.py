"""Return to host with slow native probes: the fake kernel of tests/harness, plus a delay.

Usage: ``python -m benchmarks.slowprobe --functions 8 --delay 2.0`` prints one JSON object:
the wall time of ``vfio-manager unbind-all`` over ``functions`` NPUs on vfio-pci whose
native driver (``rebellions``) takes ``delay`` seconds to probe each function, the exit
status, and the driver of every function afterwards.

A real driver's probe (firmware load, link training) can take seconds; the kernel holds
only that device's lock meanwhile, so probes of different functions can overlap when the
writes are issued side by side. The harness has no probe delay, and its rules run under
one model-wide lock, so :class:`SlowProbeKernel` sleeps in ``apply_rule`` (the one method
every write to a kernel file passes through), BEFORE the rule takes that lock: the delay
of one function never holds back another. (Better in tests/harness itself: a
``k.delay_probe(driver, seconds)`` fault next to ``fail_probe``, slept outside the lock.)

This is the one benchmark that runs the product in-process (pyfakefs needs it); it enters
through the ``vfio-manager`` console script's entry point, found in the package metadata,
and nothing deeper. Run it as its own process: pyfakefs patches ``os`` for everything
imported while it is on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from pyfakefs.fake_filesystem import FakeFilesystem
from pyfakefs.fake_filesystem_unittest import Patcher

from benchmarks.entry import Entry, cli_entry, import_product, run
from tests.harness import FakeKernel
from tests.harness.kernel import matching
from tests.harness.kernel.buffers import device_name
from tests.harness.topologies import npu_node

SLOW_DRIVER = "rebellions"
PROBE_FILE = "bus/pci/drivers_probe"


class SlowProbeKernel(FakeKernel):
    """A :class:`FakeKernel` whose ``slow_drivers`` take ``probe_delay`` seconds to probe."""

    def __init__(
        self, fs: FakeFilesystem, *, probe_delay: float, slow_drivers: tuple[str, ...], **kw: Any
    ) -> None:
        self.probe_delay = probe_delay
        self.slow_drivers = frozenset(slow_drivers)
        self.probes: list[tuple[str, float, float]] = []  # (bdf, start, end), monotonic
        super().__init__(fs, **kw)

    def _would_probe_slowly(self, bdf: str, drivers: frozenset[str]) -> bool:
        with self.lock:
            fn = self.function_table.get(bdf)
            if fn is None or fn.driver is not None:
                return False
            return any(
                matching.match(drv, fn) is not None
                for drv in self.driver_table.values()
                if drv.name in drivers
            )

    def apply_rule(self, rel: str, data: bytes) -> None:
        parts = rel.split("/")
        if rel == PROBE_FILE:
            drivers = self.slow_drivers
        elif len(parts) == 5 and parts[:3] == ["bus", "pci", "drivers"] and parts[4] == "bind":
            drivers = self.slow_drivers & {parts[3]}
        else:
            drivers = frozenset()
        bdf = device_name(data)
        if drivers and self._would_probe_slowly(bdf, drivers):
            start = time.monotonic()
            time.sleep(self.probe_delay)  # outside the model lock, as a per-device lock would be
            self.probes.append((bdf, start, time.monotonic()))
        super().apply_rule(rel, data)


def _invoke(entry: Entry, k: FakeKernel, *args: str) -> tuple[int, str]:
    argv = [
        "--sysfs-root", k.sys_root, "--dev-root", k.dev_root, "--host-root", k.host_root,
        "--state-dir", f"{k.host_root}/run/vfio-manager", "--proc-root", k.proc_root,
        "--log-format", "json", *args,
    ]  # fmt: skip
    # the product writes from a forked child by default; a child of this process would write
    # to its own copy of the in-memory fake, so in-process runs write from a thread
    return run(entry, argv, env={"VFIO_MANAGER_WRITER": "thread"})


def measure(functions: int, delay: float) -> dict[str, Any]:
    entry = cli_entry()
    import_product()
    with Patcher() as patcher:
        assert patcher.fs is not None
        k = SlowProbeKernel(patcher.fs, probe_delay=delay, slow_drivers=(SLOW_DRIVER,))
        try:
            bdfs = npu_node(k, count=functions, driver="vfio-pci")
            start = time.monotonic()
            code, stdout = _invoke(entry, k, "unbind-all")
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

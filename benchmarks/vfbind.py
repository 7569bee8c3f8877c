"""Binding many VFs when vfio-pci's probe is slow: the fake kernel of tests/harness, a delay.

Usage: ``python -m benchmarks.vfbind --vfs 256 --delay 1.0`` prints one JSON object: the wall
time of ``vfio-manager bind-all`` of one VF and of ``vfs`` VFs (4 PFs' worth at most 64 each,
each VF in an IOMMU group of its own, on their native driver), vfio-pci's probe taking
``delay`` seconds per function (:class:`benchmarks.slowprobe.SlowProbeKernel`), with
``--parallel`` as many lanes as VFs under one deadline; then the writes of a second run.
Besides the wall time, the span from the first write to the end of the last: pyfakefs
resolves every path the product opens in Python, about 30 ms a VF in all
(benchmarks/vffiles.py measures the same runs on real files).
Run it as its own process (pyfakefs patches ``os`` for everything imported while it is on).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Optional

from pyfakefs.fake_filesystem_unittest import Patcher

from benchmarks.entry import cli_entry, import_product
from benchmarks.slowprobe import SlowProbeKernel, _invoke
from tests.harness.topologies import npu_node

VF_DEVICE = 0x1221  # the VFs of the NPUs npu_node makes (device 0x1220)
PER_PF = 64


class _TimedKernel(SlowProbeKernel):
    """Notes when the first write started and the last one ended: the lanes' span, without
    the reads before them (pyfakefs resolves paths far slower than a real sysfs)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.first_write: Optional[float] = None
        self.last_write = 0.0
        super().__init__(*args, **kw)

    def apply_rule(self, rel: str, data: bytes) -> None:
        if self.first_write is None:
            self.first_write = time.monotonic()
        try:
            super().apply_rule(rel, data)
        finally:
            self.last_write = time.monotonic()


def _bind(vfs: int, delay: float) -> dict[str, Any]:
    """One fake node of ``vfs`` VFs; bind-all twice (the second must write nothing)."""
    entry = cli_entry()
    with Patcher() as patcher:
        assert patcher.fs is not None
        k = _TimedKernel(patcher.fs, probe_delay=delay, slow_drivers=("vfio-pci",))
        try:
            pfs = npu_node(k, count=-(-vfs // PER_PF))
            bdfs: list[str] = []
            for pf in pfs:
                count = min(PER_PF, vfs - len(bdfs))
                bdfs += k.add_vfs(pf, count, device=VF_DEVICE, driver="rebellions")
            argv = ("--parallel", str(max(1, vfs)), "bind-all", "--device-id", f"{VF_DEVICE:#x}")
            start = time.monotonic()
            code, _out = _invoke(entry, k, *argv)
            seconds = time.monotonic() - start
            bound = sum(1 for bdf in bdfs if k.driver_of(bdf) == "vfio-pci")
            probes, writes = len(k.probes), len(k.writes)
            writes_span = k.last_write - (k.first_write or k.last_write)
            k.clear_writes()
            again_start = time.monotonic()
            again_code, _out = _invoke(entry, k, *argv)
            again = time.monotonic() - again_start
            again_writes = len(k.writes)
        finally:
            k.close()
    return {
        "vfs": vfs,
        "seconds": seconds,
        "exit_code": code,
        "bound": bound,
        "writes": writes,
        "slow_probes": probes,
        "writes_span": writes_span,
        "second_run_seconds": again,
        "second_run_exit_code": again_code,
        "second_run_writes": again_writes,
    }


def measure(vfs: int, delay: float) -> dict[str, Any]:
    import_product()
    one, many = _bind(1, delay), _bind(vfs, delay)
    return {
        "delay": delay,
        "one": one,
        "many": many,
        "ratio": many["seconds"] / one["seconds"],
        "writes_ratio": many["writes_span"] / one["writes_span"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vfs", type=int, default=256)
    parser.add_argument("--delay", type=float, default=1.0)
    args = parser.parse_args()
    json.dump(measure(args.vfs, args.delay), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

"""Section 5, VFs at scale: ``bind-all`` of many VFs against one VF, vfio-pci's probe delayed.

Runs :mod:`benchmarks.vffiles` (a generated node of real files whose writes run the kernel's
store functions: the target's measure) and :mod:`benchmarks.vfbind` (the tests' fake kernel
on pyfakefs), each as a child process. With a lane per VF (``--parallel``) under one deadline
the probes overlap, so the total stays near one VF's; a second run writes nothing.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

from benchmarks import report
from benchmarks.context import Context
from benchmarks.runner import run

VFS = 256


def run_section(ctx: Context) -> list[report.Table]:
    table = report.Table(
        f"VFs at scale: bind-all of {VFS} VFs against one, vfio-pci's probe delayed",
        (
            "kernel",
            "VFs",
            "probe delay",
            "bind-all total",
            "vs one VF",
            "writes",
            "2nd run writes",
            "exit",
        ),
    )
    for kernel, module in (("real files", "benchmarks.vffiles"), ("pyfakefs", "benchmarks.vfbind")):
        found = _measure(ctx, module)
        if found is None:
            continue
        for side in (found["one"], found["many"]):
            table.rows.append(
                (
                    kernel,
                    str(side["vfs"]),
                    report.seconds(found["delay"]),
                    report.seconds(side["seconds"]),
                    report.ratio(side["seconds"], found["one"]["seconds"]),
                    str(side["writes"]),
                    str(side["second_run_writes"]),
                    str(side["exit_code"]),
                )
            )
        table.data[kernel] = found
    table.notes += [
        "4 PFs of 64 VFs, each VF in its own IOMMU group, on their native driver; "
        f"--parallel {VFS}; the target: within 1.5x of one VF's, on real files",
        "real files (benchmarks/vffiles.py): a generated node in memory, the product as on a "
        "node (its forked writer), the kernel's store functions in place of the write syscall",
        "pyfakefs (benchmarks/vfbind.py): the tests' fake kernel, in-process, writing from a "
        "thread; pyfakefs resolves every path in Python (about 30 ms a VF in all): reported, "
        "not held to the target",
    ]
    return [table]


def _measure(ctx: Context, module: str) -> Optional[dict[str, Any]]:
    argv = [sys.executable, "-m", module, "--vfs", str(VFS), "--delay", str(ctx.probe_delay)]
    sample = run(argv)
    try:
        found: dict[str, Any] = json.loads(sample.stdout)
    except ValueError:
        ctx.problems.append(f"VFs at scale: {module} failed: {sample.stderr[-800:]}")
        return None
    for side in (found["one"], found["many"]):
        if side["exit_code"] or side["bound"] != side["vfs"] or side["second_run_writes"]:
            ctx.problems.append(f"VFs at scale: not every VF bound, or a second run wrote: {side}")
    return found

"""Section 5, VFs at scale: ``bind-all`` of many VFs against one VF, vfio-pci's probe delayed.

Runs :mod:`benchmarks.vfbind` as a child process. With a lane per VF (``--parallel``) under
one deadline the probes overlap, so the total stays near one VF's; a second run writes nothing.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from benchmarks import report
from benchmarks.context import Context
from benchmarks.runner import run

VFS = 256


def run_section(ctx: Context) -> list[report.Table]:
    table = report.Table(
        f"VFs at scale: bind-all of {VFS} VFs against one, vfio-pci's probe delayed",
        (
            "VFs",
            "probe delay",
            "bind-all total",
            "vs one VF",
            "first write to last",
            "vs one VF",
            "probes",
            "2nd run writes",
            "exit",
        ),
    )
    argv = [sys.executable, "-m", "benchmarks.vfbind", "--vfs", str(VFS)]
    sample = run([*argv, "--delay", str(ctx.probe_delay)])
    try:
        found: dict[str, Any] = json.loads(sample.stdout)
    except ValueError:
        ctx.problems.append(f"VFs at scale: vfbind failed: {sample.stderr[-800:]}")
        return [table]
    for side in (found["one"], found["many"]):
        if side["exit_code"] or side["bound"] != side["vfs"] or side["second_run_writes"]:
            ctx.problems.append(f"VFs at scale: not every VF bound, or a second run wrote: {side}")
        table.rows.append(
            (
                str(side["vfs"]),
                report.seconds(found["delay"]),
                report.seconds(side["seconds"]),
                report.ratio(side["seconds"], found["one"]["seconds"]),
                report.seconds(side["writes_span"]),
                report.ratio(side["writes_span"], found["one"]["writes_span"]),
                str(side["slow_probes"]),
                str(side["second_run_writes"]),
                str(side["exit_code"]),
            )
        )
    table.data = {"one": found["one"], "many": found["many"], "delay": found["delay"]}
    table.notes.append(
        f"in-process fake kernel (benchmarks/vfbind.py): 4 PFs of 64 VFs, each VF in its own "
        f"IOMMU group, on their native driver; --parallel {VFS}; the target is a bind within "
        "1.5x of one VF's; the reads before the first write cost far more on pyfakefs than on "
        "a real sysfs (the scale section measures them on real files)"
    )
    return [table]

"""Section 4, return to host: ``unbind-all`` of N functions whose native probe is slow.

Runs :mod:`benchmarks.slowprobe` (the fake kernel with a probe delay) as a child process,
once without the delay (the command's own cost) and once with it. Probing side by side
would make the total about one delay plus that cost; one function after another makes it
N delays.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from benchmarks import report
from benchmarks.context import Context
from benchmarks.runner import run


def _measure(ctx: Context, delay: float) -> dict[str, Any]:
    argv = [
        sys.executable, "-m", "benchmarks.slowprobe",
        "--functions", str(ctx.probe_functions), "--delay", str(delay),
    ]  # fmt: skip
    sample = run(argv)
    try:
        found: dict[str, Any] = json.loads(sample.stdout)
    except ValueError:
        ctx.problems.append(f"return to host: slowprobe failed: {sample.stderr[-800:]}")
        return {}
    if found["exit_code"] != 0 or set(found["drivers"].values()) != {"rebellions"}:
        ctx.problems.append(f"return to host: not every function is back: {found['drivers']}")
    return found


def run_section(ctx: Context) -> list[report.Table]:
    table = report.Table(
        f"Return to host: unbind-all of {ctx.probe_functions} NPUs, native probe delayed",
        (
            "probe delay",
            "unbind-all total",
            "total / delay",
            "native probes",
            "first probe start to last probe end",
            "exit",
        ),
    )
    for delay in (0.0, ctx.probe_delay):
        found = _measure(ctx, delay)
        if not found:
            continue
        table.rows.append(
            (
                report.seconds(delay) if delay else "none",
                report.seconds(found["seconds"]),
                report.ratio(found["seconds"], delay) if delay else "-",
                str(found["slow_probes"]),
                report.seconds(found["probe_span"]) if found["slow_probes"] else "-",
                str(found["exit_code"]),
            )
        )
        table.data[str(delay)] = {k: v for k, v in found.items() if k != "stdout"}
    table.notes.append(
        "in-process fake kernel (tests/harness on pyfakefs) entered through the vfio-manager "
        "console script's entry point; the delay is slept outside the fake's model lock "
        f"(benchmarks/slowprobe.py); the target is a total within 1.4x of one delay "
        f"({report.seconds(ctx.probe_delay)}), not {ctx.probe_functions} of them"
    )
    return [table]

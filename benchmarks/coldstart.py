"""Section 1, cold start: the product's commands against the interpreter's import floors.

Each command is a fresh process (never in-process), run round-robin with its floor. The
node is small (16 endpoints, 12 NPUs already on vfio-pci) so that start-up, not reading
sysfs, is what is measured; the converged ``bind-all`` writes nothing and, with nothing to
unbind, never scans /proc.
"""

from __future__ import annotations

from benchmarks import fakenode, report
from benchmarks.context import Context
from benchmarks.runner import interleaved, product_argv, python_argv

TARGETS = {"vfio-manager status": 1.7, "vfio-manager bind-all (converged)": 1.3}
"""Each command's target: wall time within this multiple of its import floor."""


def run_section(ctx: Context) -> list[report.Table]:
    node = fakenode.generate(ctx.path("cold"), 16, npu_driver=fakenode.VFIO)
    vm = [*product_argv(), *node.cli_args()]
    commands = {
        "python -c pass": python_argv("pass"),
        'python -c "import click"': python_argv("import click"),
        "vfio-manager status": [*vm, "status"],
        'python -c "import click, structlog"': python_argv("import click, structlog"),
        "vfio-manager bind-all (converged)": [*vm, "bind-all"],
    }
    found = interleaved(commands, reps=ctx.reps, warmup=max(ctx.warmup, 2))
    floors = {
        "vfio-manager status": 'python -c "import click"',
        "vfio-manager bind-all (converged)": 'python -c "import click, structlog"',
    }
    table = report.Table(
        "Cold start (separate processes)",
        ("command", "wall", "min to max", "CPU", "peak RSS", "wall vs floor", "CPU vs floor",
         "exit"),
    )  # fmt: skip
    for label, series in found.items():
        floor = found[floors[label]] if label in floors else None
        table.rows.append(
            (
                f"`{label}`",
                report.seconds(series.median),
                report.spread(*series.spread),
                report.seconds(series.cpu),
                report.mib(series.rss_mib),
                report.ratio(series.median, floor.median) if floor else "floor",
                report.ratio(series.cpu, floor.cpu) if floor else "floor",
                report.codes(series.returncodes),
            )
        )
        table.data[label] = [(s.seconds, s.cpu_seconds) for s in series.samples]
    converged = found["vfio-manager bind-all (converged)"].last
    if converged.returncode != 0 or "0 write(s)" not in converged.stdout:
        ctx.problems.append(f"cold start: converged bind-all did not converge: {converged.stdout}")
    table.notes.append(
        f"{ctx.reps} runs each after {max(ctx.warmup, 2)} warm-up runs, interleaved; node: 16 "
        "endpoints (12 NPUs on vfio-pci, /dev/vfio/N present), state and proc dirs in a temp dir; "
        "wall and CPU are medians; targets: "
        + ", ".join(f"{label} within {x}x of its floor" for label, x in TARGETS.items())
    )
    return [table]

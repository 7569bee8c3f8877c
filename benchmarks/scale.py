"""Section 2, scale: generated nodes of 1k/4k/8k endpoints read through ``--sysfs-root``.

Per size, a node whose NPUs (three quarters of the endpoints) are on their native driver:
``status --json`` and ``bind-all --dry-run`` (plans every NPU, checks the host guard and
the in-use targets against an empty /proc); then the same node converged in place (every
NPU on vfio-pci): ``bind-all``, which must write nothing. Growth per 1k functions is the
least-squares slope of the medians over the sizes; linear code shows a constant slope and
a time per 1k that does not rise with the size.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence

from benchmarks import fakenode, report
from benchmarks.context import Context
from benchmarks.runner import Series, interleaved, product_argv, repeat

COMMANDS = ("status --json", "bind-all --dry-run", "bind-all (converged)")


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``(x, y)`` points (0 for fewer than two sizes)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


def _check(ctx: Context, size: int, node: fakenode.FakeNode, found: dict[str, Series]) -> None:
    npus = len(node.npus)
    status = found["status --json"].last
    try:
        devices = json.loads(status.stdout)["devices"]
    except (ValueError, KeyError):
        devices = None
    if devices is None or len(devices) != npus:
        ctx.problems.append(f"scale {size}: status --json did not list {npus} NPUs")
    plan = found["bind-all --dry-run"].last
    if plan.returncode != 0 or f"{3 * npus} write(s) planned" not in plan.stdout:
        ctx.problems.append(f"scale {size}: bind-all --dry-run did not plan 3 writes per NPU")
    converged = found["bind-all (converged)"].last
    if converged.returncode != 0 or f"{npus} converged" not in converged.stdout:
        ctx.problems.append(f"scale {size}: converged bind-all did not report {npus} converged")


def run_section(ctx: Context) -> list[report.Table]:
    table = report.Table(
        "Scale (generated nodes on tmpfs, separate processes)",
        (
            "endpoints",
            "NPUs",
            "command",
            "wall",
            "min to max",
            "CPU",
            "wall per 1k",
            "peak RSS",
            "exit",
        ),
    )
    medians: dict[str, list[tuple[float, float]]] = {c: [] for c in COMMANDS}
    cpus: dict[str, list[tuple[float, float]]] = {c: [] for c in COMMANDS}
    for size in ctx.sizes:
        root = ctx.path(f"scale-{size}")
        node = fakenode.generate(root, size)
        vm = [*product_argv(), *node.cli_args()]
        found = interleaved(
            {
                "status --json": [*vm, "status", "--json"],
                "bind-all --dry-run": [*vm, "bind-all", "--dry-run"],
            },
            reps=ctx.heavy_reps,
            warmup=ctx.warmup,
        )
        fakenode.converge(node)
        found["bind-all (converged)"] = repeat(
            "bind-all (converged)", [*vm, "bind-all"], reps=ctx.heavy_reps, warmup=ctx.warmup
        )
        _check(ctx, size, node, found)
        for command in COMMANDS:
            series = found[command]
            medians[command].append((size / 1000, series.median))
            cpus[command].append((size / 1000, series.cpu))
            table.rows.append(
                (
                    str(size),
                    str(len(node.npus)),
                    f"`{command}`",
                    report.seconds(series.median),
                    report.spread(*series.spread),
                    report.seconds(series.cpu),
                    report.seconds(series.median / (size / 1000)),
                    report.mib(series.rss_mib),
                    report.codes(series.returncodes),
                )
            )
        shutil.rmtree(root, ignore_errors=True)
    growth = report.Table(
        "Scale: growth per 1k endpoints (least-squares slope over the sizes)",
        ("command", "wall per 1k", "CPU per 1k", "largest / smallest: wall", "CPU", "size"),
    )
    for command, points in medians.items():
        (x0, y0), (x1, y1) = points[0], points[-1]
        (_, c0), (_, c1) = cpus[command][0], cpus[command][-1]
        growth.rows.append(
            (
                f"`{command}`",
                report.seconds(slope(points)),
                report.seconds(slope(cpus[command])),
                report.ratio(y1, y0),
                report.ratio(c1, c0),
                f"{x1 / x0:.0f}x" if x0 else "-",
            )
        )
        growth.data[command] = {"wall": points, "cpu": cpus[command]}
    total = len(fakenode.plan_functions(ctx.sizes[0])) - ctx.sizes[0]
    table.notes.append(
        f"{ctx.heavy_reps} run(s) each after {ctx.warmup} warm-up run(s); each node also has one "
        f"root port per 16 endpoints (e.g. {total} for {ctx.sizes[0]}), a quarter of the endpoints "
        "are e1000e NICs and NVMe disks; the target is `status --json` <= 0.5 s "
        "at 4,096 functions, linear"
    )
    return [table, growth]

"""Where the time goes: cProfile of ``status --json`` on 4,096 endpoints, import times at start.

Not part of the default run (``--only profile``): a profile slows what it watches, so its
shares point at hot spots and its absolute times are not the benchmark's figures.
"""

from __future__ import annotations

import os
import pstats
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks import fakenode, report
from benchmarks.context import Context
from benchmarks.runner import run

TOP = 15
_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def _where(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    repo_marker = os.sep + "vfio_manager" + os.sep
    if repo_marker in filename:
        return "vfio_manager/" + filename.split(repo_marker, 1)[1]
    return filename


def _cprofile(ctx: Context, node: fakenode.FakeNode, command: list[str]) -> list[report.Table]:
    label = " ".join(command)
    out = ctx.path("profile.prof")
    argv = [sys.executable, "-m", "cProfile", "-o", out, "-m", "vfio_manager",
            *node.cli_args(), *command]  # fmt: skip
    run(argv)  # warm-up: byte-code, page cache
    sample = run(argv)
    stats = pstats.Stats(out)
    total = stats.total_tt  # type: ignore[attr-defined]
    entries = stats.stats  # type: ignore[attr-defined]
    by_self = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:TOP]
    own = [item for item in entries.items() if "vfio_manager" in item[0][0]]
    by_cum = sorted(own, key=lambda item: item[1][3], reverse=True)[:TOP]
    tables = []
    size = len(node.functions) - len([f for f in node.functions if f.pci_class == 0x060400])
    for title, rows, column in (
        ("self time", by_self, 2),
        ("cumulative time, vfio_manager functions", by_cum, 3),
    ):
        table = report.Table(
            f"Profile: `{label}`, {size} endpoints, top {TOP} by {title}",
            ("function", "calls", "seconds", "share"),
        )
        for (filename, line, name), stat in rows:
            table.rows.append(
                (
                    f"`{_where(filename)}:{line} {name}`",
                    str(stat[1]),
                    f"{stat[column]:.3f}",
                    f"{min(100, 100 * stat[column] / total):.0f}%",
                )
            )
        table.notes.append(
            f"cProfile total {total:.2f} s (wall {sample.seconds:.2f} s under the profiler; "
            f"exit {sample.returncode})"
        )
        tables.append(table)
    return tables


@dataclass(frozen=True)
class _Import:
    self_us: int
    cumulative_us: int
    depth: int
    name: str


def _cumulative(item: _Import) -> int:
    return item.cumulative_us


def _self(item: _Import) -> int:
    return item.self_us


def _importtime(label: str, argv: list[str]) -> list[report.Table]:
    run([sys.executable, "-X", "importtime", *argv])  # warm-up
    sample = run([sys.executable, "-X", "importtime", *argv])
    found = []
    for line in sample.stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            found.append(
                _Import(
                    int(match.group(1)),
                    int(match.group(2)),
                    len(match.group(3)) // 2,
                    match.group(4),
                )
            )
    total = sum(i.self_us for i in found)
    tables = []
    views: tuple[tuple[str, list[_Import], Callable[[_Import], int]], ...] = (
        ("top-level imports by cumulative time", [i for i in found if i.depth == 0], _cumulative),
        ("every import by self time", found, _self),
    )
    for title, chosen, key in views:
        table = report.Table(
            f"Import time: `{label}` ({title})", ("module", "self", "cumulative", "share")
        )
        for item in sorted(chosen, key=key, reverse=True)[:TOP]:
            table.rows.append(
                (
                    f"`{item.name}`",
                    report.seconds(item.self_us / 1e6),
                    report.seconds(item.cumulative_us / 1e6),
                    f"{100 * key(item) / total:.0f}%" if total else "-",
                )
            )
        table.notes.append(
            f"all imports: {report.seconds(total / 1e6)} of a {report.seconds(sample.seconds)} "
            "run (python -X importtime, which adds its own overhead); share of all imports"
        )
        tables.append(table)
    return tables


def run_section(ctx: Context) -> list[report.Table]:
    size = 4096 if 4096 in ctx.sizes or not ctx.sizes else max(ctx.sizes)
    node = fakenode.generate(ctx.path(f"profile-{size}"), size)
    tables = _cprofile(ctx, node, ["status", "--json"])
    tables += _cprofile(ctx, node, ["bind-all", "--dry-run"])
    fakenode.converge(node)
    tables += _cprofile(ctx, node, ["bind-all"])
    shutil.rmtree(node.root, ignore_errors=True)
    cold = fakenode.generate(ctx.path("profile-cold"), 16, npu_driver=fakenode.VFIO)
    module = ["-m", "vfio_manager", *cold.cli_args()]
    tables += _importtime("vfio-manager status", [*module, "status"])
    tables += _importtime("vfio-manager bind-all (converged)", [*module, "bind-all"])
    return tables

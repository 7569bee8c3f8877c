"""Section 3, the in-use scan: binding 8 functions with 2,000 processes x 200 descriptors.

A plain-file tree cannot run the kernel's store functions, so a real ``bind-all`` against
it writes the override, the unbind and drivers_probe, then finds the driver link unchanged,
fails its check and puts each function back (exit 1). That run still does everything a
real bind does before and around its writes, the /proc scan included, so it is measured
as it is, and so is ``bind-all --dry-run``, which scans too but writes nothing. The scan's
cost is the difference between the synthetic /proc and an empty one, same node, same run.

The converged run (every NPU already on vfio-pci) must not scan at all: it runs under an
audit hook (:mod:`benchmarks.audited`) that counts opens and listings under the synthetic
/proc; the bind of the native node is counted the same way, to show one pass per process.
"""

from __future__ import annotations

import json
import os
import re
import sys

from benchmarks import fakenode, fakeproc, report
from benchmarks.context import Context
from benchmarks.runner import Series, interleaved, product_argv, run

_WRITES = re.compile(r"(\d+) write\(s\)")


def _audited(ctx: Context, label: str, argv: list[str], proc: str) -> dict[str, int]:
    """Run ``argv`` (a product command line) again under the audit hook; its counts."""
    counts = ctx.path(f"audit-{label.replace(' ', '_').replace(',', '')}.json")
    args = argv[len(product_argv()) :]
    sample = run([sys.executable, "-m", "benchmarks.audited", counts, proc, "--", *args])
    if not os.path.exists(counts):
        ctx.problems.append(f"in-use: audited {label} run left no counts: {sample.stderr[-500:]}")
        return {}
    with open(counts, encoding="utf-8") as handle:
        found: dict[str, int] = json.load(handle)
    found["exit"] = sample.returncode
    return found


def _writes(series: Series) -> str:
    match = _WRITES.search(series.last.stdout.splitlines()[-1] if series.last.stdout else "")
    return match.group(1) if match else "-"


def run_section(ctx: Context) -> list[report.Table]:
    proc = fakeproc.generate(ctx.path("proc"), ctx.processes, ctx.fds)
    native = fakenode.generate(ctx.path("inuse-native"), 10, other_share=0.2)
    converged = fakenode.generate(
        ctx.path("inuse-converged"), 10, other_share=0.2, npu_driver=fakenode.VFIO
    )
    npus = len(native.npus)
    commands: dict[str, list[str]] = {}
    for proc_label, proc_root in (("empty /proc", native.empty_proc), ("synthetic /proc", proc)):
        vm = [*product_argv(), *native.cli_args(proc_root)]
        if not ctx.quick:
            commands[f"bind-all --dry-run, {proc_label}"] = [*vm, "bind-all", "--dry-run"]
        commands[f"bind-all (writes to plain files), {proc_label}"] = [*vm, "bind-all"]
    vm_converged = [*product_argv(), *converged.cli_args(proc)]
    commands["bind-all (converged), synthetic /proc"] = [*vm_converged, "bind-all"]
    reps = ctx.heavy_reps  # a scan of the full /proc costs seconds
    found = interleaved(commands, reps=reps, warmup=ctx.warmup)

    for label, series in found.items():
        expected = 1 if "writes to plain files" in label else 0
        if series.returncodes != {expected}:
            ctx.problems.append(
                f"in-use: `{label}` exited {report.codes(series.returncodes)}, expected "
                f"{expected}: {series.last.stderr[-300:]}"
            )
    table = report.Table(
        f"In-use scan: {npus} NPUs to bind, /proc of {ctx.processes} processes x {ctx.fds} fds",
        (
            "command",
            "wall",
            "min to max",
            "CPU",
            "scan cost (vs empty /proc): wall",
            "CPU",
            "writes",
            "exit",
        ),
    )
    for label, series in found.items():
        base_label = label.replace("synthetic /proc", "empty /proc")
        cost = cpu_cost = "-"
        if base_label != label and base_label in found:
            cost = report.seconds(series.median - found[base_label].median)
            cpu_cost = report.seconds(series.cpu - found[base_label].cpu)
        table.rows.append(
            (
                f"`{label}`",
                report.seconds(series.median),
                report.spread(*series.spread),
                report.seconds(series.cpu),
                cost,
                cpu_cost,
                _writes(series) if "dry-run" not in label else "0 (dry run)",
                report.codes(series.returncodes),
            )
        )
        table.data[label] = [(s.seconds, s.cpu_seconds) for s in series.samples]

    audit = report.Table(
        "In-use scan: what each run opened and listed under the synthetic /proc (audit hook)",
        ("run", "os.listdir", "open", "exit"),
    )
    runs = [("bind-all, converged", "bind-all (converged), synthetic /proc")]
    if not ctx.quick:
        runs.insert(
            0, ("bind-all, 8 NPUs to move", "bind-all (writes to plain files), synthetic /proc")
        )
    audited = {label: _audited(ctx, label, commands[command], proc) for label, command in runs}
    conv_counts = audited["bind-all, converged"]
    for label, counts in audited.items():
        audit.rows.append(
            (
                label,
                str(counts.get("os.listdir", "-")),
                str(counts.get("open", "-")),
                str(counts.get("exit", "-")),
            )
        )
    if conv_counts.get("os.listdir", 0) or conv_counts.get("open", 0):
        ctx.problems.append("in-use: the converged bind-all read the synthetic /proc")
    audit.notes.append(
        f"the converged run must show 0 and 0 (no scan); a scanning run lists /proc once and "
        f"each process's fd/ once ({ctx.processes + 1} listings), and opens each maps file when "
        "a BAR file is among the targets"
    )
    table.notes.append(
        f"{reps} run(s) each after {ctx.warmup} warm-up run(s), interleaved; node: {npus} NPUs "
        "on rebellions with BAR files (resource0, resource2, resource2_wc) + 2 other endpoints; "
        "the run that writes ends with exit 1 by design (plain files do not bind, see the "
        "module docstring); the converged node has the same NPUs on vfio-pci"
    )
    return [table, audit]

"""Section 5, side by side in the QEMU guest: the operator's vfio-manage.sh and vfio-manager.

Runs only with ``--guest-script PATH`` (or VFIO_BENCH_GUEST_SCRIPT): the script is not part
of this repository; docs/performance.md says how to extract it from the operator's source.
It is adapted in two places only: the vendor (``1eff`` -> ``8086``) and the
class (``0x120000`` -> ``0x020000``), so that it selects the guest's emulated Intel NICs.

One boot of ``tools/e2e/run --boot on --cmd ...`` (its guest, its kernel, nothing written
on this machine): the command copies the project's staged wheel contents (/src/site) to
the guest's RAM disk and byte-compiles them, writes this package's guest_steps.py and the
adapted script there (base64 in the command: tools/e2e/run needs no change), and runs the
steps; the figures come back in the boot's output folder (/out/bench.json).

Both tools get the same selection, vendor 0x8086 and class 0x020000: the e1000 at 00:05.0
and the e1000e at 03:00.0. (The script cannot be narrowed to the e1000e alone by vendor and
class.) vfio-manager refuses the e1000, whose IOMMU group mate 00:05.1 stays on
virtio-pci, so its bind-all and status --check exit 1 while it moves the e1000e.
"""

from __future__ import annotations

import base64
import json
import os
import re
import statistics
import subprocess
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.context import Context
from benchmarks.runner import REPO

ADAPT = (("1eff", "8086"), ("0x120000", "0x020000"))
_OUTPUT = re.compile(r"boot 'on' .*; output in (\S+)")


def adapt(script: str) -> tuple[str, dict[str, int]]:
    """The script with the vendor and class swapped; how many of each it replaced."""
    counts = {}
    for old, new in ADAPT:
        counts[old] = script.count(old)
        script = script.replace(old, new)
    return script, counts


def _guest_command(script: str, reps: int) -> str:
    steps = (Path(__file__).with_name("guest_steps.py")).read_bytes()
    b64 = {
        name: base64.b64encode(data).decode()
        for name, data in (("guest_steps.py", steps), ("vfio-manage.sh", script.encode()))
    }
    return "\n".join(
        [
            "set -e",
            "mkdir -p /opt/bench",
            *(f"echo '{data}' | base64 -d > /opt/bench/{name}" for name, data in b64.items()),
            "chmod 755 /opt/bench/vfio-manage.sh",
            "rm -rf /opt/vfio-manager && cp -r /src/site /opt/vfio-manager",
            "python3 -m compileall -q /opt/vfio-manager",
            f"python3 /opt/bench/guest_steps.py --script /opt/bench/vfio-manage.sh "
            f"--site /opt/vfio-manager --reps {reps} --out /out/bench.json",
        ]
    )


def _boot(ctx: Context, script: str) -> dict[str, Any]:
    # a TCG guest on a busy host is slow: allow more than tools/e2e/run's 900 s per boot
    env = {"TIMEOUT": "2400", **os.environ, "QUIET": "1"}
    proc = subprocess.run(
        [
            str(REPO / "tools/e2e/run"),
            "--boot",
            "on",
            "--cmd",
            _guest_command(script, ctx.guest_reps),
        ],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    match = _OUTPUT.search(proc.stderr)
    path = Path(match.group(1)) / "bench.json" if match else None
    if proc.returncode != 0 or path is None or not path.is_file():
        raise RuntimeError(f"tools/e2e/run exited {proc.returncode}: {proc.stderr[-1500:]}")
    found: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    found["run_dir"] = str(path.parent)
    return found


def _cell(outcomes: list[dict[str, Any]]) -> tuple[float, str]:
    median = statistics.median(o["seconds"] for o in outcomes)
    writes = sorted({len(o["writes"]) for o in outcomes})
    codes = sorted({o["exit"] for o in outcomes})
    shown = "/".join(str(w) for w in writes)
    return median, f"{report.seconds(median)}, {shown} writes, exit {','.join(map(str, codes))}"


def run_section(ctx: Context) -> list[report.Table]:
    if not ctx.guest_script:
        table = report.Table("QEMU guest, side by side with vfio-manage.sh", ("status",))
        table.rows.append(("skipped: pass --guest-script PATH (see docs/performance.md)",))
        return [table]
    script, counts = adapt(Path(ctx.guest_script).read_text(encoding="utf-8"))
    if not all(counts.values()):
        ctx.problems.append(
            f"guest: {ctx.guest_script} does not look like vfio-manage.sh: {counts}"
        )
        return []
    return [render(ctx, _boot(ctx, script))]


def render(ctx: Context, found: dict[str, Any]) -> report.Table:
    """The side-by-side table from the guest's bench.json."""
    table = report.Table(
        f"QEMU guest (kernel {found['kernel']}, TCG), side by side: vendor 0x8086 class 0x020000",
        ("step", "vfio-manage.sh", "vfio-manager", "vfio-manager / script"),
    )
    runs = found["runs"]
    for step in runs["vfio-manager"]:
        script_median, script_cell = _cell(runs["vfio-manage.sh"][step])
        ours_median, ours_cell = _cell(runs["vfio-manager"][step])
        table.rows.append((step, script_cell, ours_cell, report.ratio(ours_median, script_median)))
    for label, times in found["floors"].items():
        table.rows.append((f"floor: `{label}`", "", report.seconds(statistics.median(times)), ""))
    last = {tool: runs[tool]["unbind-all"][-1]["drivers"] for tool in runs}
    rounds = len(runs["vfio-manager"]["check"])
    table.notes += [
        f"median of {rounds} rounds after a warm-up round, tools alternating, each round "
        "from the boot state (the harness restores it between tools, uncounted); writes: files "
        "under /sys/bus/pci opened for writing (inotify IN_CLOSE_WRITE); the guest runs under TCG, "
        "so its times are several times a real machine's: compare within the table",
        f"functions and boot drivers: {found['selection']['functions']}; after unbind-all: "
        f"script {last['vfio-manage.sh']}, vfio-manager {last['vfio-manager']}",
        "check = `vfio-manage.sh check_bind --all` vs `vfio-manager status --check`; the "
        "project runs from the guest's RAM disk, byte-compiled; raw figures in "
        f"{found['run_dir']}/bench.json",
    ]
    table.data = {k: v for k, v in found.items() if k != "warmup"}
    return table

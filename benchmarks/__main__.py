"""``python -m benchmarks``: measure vfio-manager and print the figures as Markdown tables.

A report, never a verdict: the exit status is 0 whatever the timings are. It is 1 only
when a section could not measure what it claims (a crash, a generated node the product
did not read as expected, a converged run that scanned /proc or wrote), so CI can run it
and still fail on a broken benchmark. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

from benchmarks import (
    coldstart,
    daemon,
    guest,
    inuse,
    profiling,
    report,
    returnhost,
    scale,
    vfscale,
)
from benchmarks.context import Context, default_workdir_parent

SECTIONS: dict[str, Callable[[Context], list[report.Table]]] = {
    "cold": coldstart.run_section,
    "scale": scale.run_section,
    "inuse": inuse.run_section,
    "return": returnhost.run_section,
    "vfs": vfscale.run_section,
    "guest": guest.run_section,
    "daemon": daemon.run_section,
    "profile": profiling.run_section,
}
DEFAULT_SECTIONS = ("cold", "scale", "inuse", "return", "vfs", "daemon", "guest")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI mode: 3 runs of the cheap commands and 1 of the slow ones, sizes 1024 and "
        "4096, probe delay 0.5 s",
    )
    parser.add_argument("--reps", type=int, help="measured runs per command (default 5, quick 3)")
    parser.add_argument("--sizes", help="endpoint counts, comma-separated (default 1024,4096,8192)")
    parser.add_argument(
        "--only",
        help=f"comma-separated sections out of {','.join(SECTIONS)} (default: all but profile)",
    )
    parser.add_argument("--probe-delay", type=float, help="seconds (default 2, quick 0.5)")
    parser.add_argument(
        "--guest-script",
        default=os.environ.get("VFIO_BENCH_GUEST_SCRIPT"),
        help="the operator's vfio-manage.sh: runs the QEMU side-by-side section "
        "(env VFIO_BENCH_GUEST_SCRIPT; skipped without it)",
    )
    parser.add_argument("--guest-reps", type=int, default=3, help="rounds in the guest")
    parser.add_argument(
        "--workdir", help=f"parent of the scratch folder (default {default_workdir_parent()})"
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated trees")
    parser.add_argument("--json", dest="json_out", help="also write the raw figures here")
    return parser.parse_args(argv)


def _context(args: argparse.Namespace, workdir: str) -> Context:
    sizes = args.sizes or ("1024,4096" if args.quick else "1024,4096,8192")
    return Context(
        reps=args.reps or (3 if args.quick else 5),
        warmup=0 if args.quick else 1,  # quick: the cold-start section compiles the byte-code
        sizes=tuple(int(s) for s in sizes.split(",")),
        workdir=workdir,
        quick=args.quick,
        probe_delay=args.probe_delay or (0.5 if args.quick else 2.0),
        guest_script=args.guest_script,
        guest_reps=args.guest_reps,
    )


def main(argv: list[str]) -> int:
    args = _parse(argv)
    chosen = args.only.split(",") if args.only else list(DEFAULT_SECTIONS)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        print(f"unknown section(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix="vfio-bench-", dir=args.workdir or default_workdir_parent())
    ctx = _context(args, workdir)
    print(f"## vfio-manager benchmark ({time.strftime('%Y-%m-%d %H:%M')})\n")
    print(
        f"`python -m benchmarks {' '.join(argv)}`".replace("  ", " ")
        + f" — Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}, scratch {workdir}\n"
    )
    raw: dict[str, object] = {}
    try:
        for name in chosen:
            started = time.monotonic()
            try:
                tables = SECTIONS[name](ctx)
            except Exception as exc:  # noqa: BLE001 - reported, and the run fails at the end
                ctx.problems.append(f"{name}: crashed: {exc!r}")
                print(f"### {name}: CRASHED: {exc!r}\n", flush=True)
                continue
            for table in tables:
                print("\n".join(table.lines()), flush=True)
                raw[table.title] = table.data
            print(f"({name}: {time.monotonic() - started:.0f} s)\n", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"load average after the run: {os.getloadavg()[0]:.2f}\n")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as handle:
            json.dump(raw, handle, indent=1)
    if ctx.problems:
        print("### Problems (the benchmark could not measure what it claims)\n")
        print("\n".join(f"- {p}" for p in ctx.problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

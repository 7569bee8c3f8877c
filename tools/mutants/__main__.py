"""``python -m tools.mutants``: mutation testing of the safety-critical modules (a report).

Examples::

    .venv/bin/python -m tools.mutants                     # the sampled run (see docs/testing.md)
    .venv/bin/python -m tools.mutants --modules lock --sample 0   # every mutant of one module
    .venv/bin/python -m tools.mutants --only engine:57 journal:12 # re-run named mutants
    .venv/bin/python -m tools.mutants --list --modules plan       # show the mutants, run none
    .venv/bin/python -m tools.mutants --report                    # summarize the results file

Never a CI gate: the exit status is 0 whatever survives (1 only when the unmutated tests fail).
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
from collections import Counter, defaultdict
from pathlib import Path

from .operators import Site, sites
from .runner import Result, Sandbox, append_result, read_results, run_mutants
from .targets import TARGETS

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "build" / "mutants" / "results.jsonl"


def choose(name: str, all_sites: list[Site], sample: int, seed: int) -> list[tuple[int, Site]]:
    """A seeded sample of ``sample`` mutants (all when 0), in source order."""
    indexed = list(enumerate(all_sites))
    if sample and sample < len(indexed):
        rng = random.Random(f"{seed}:{name}")  # noqa: S311 - a reproducible sample, not a secret
        indexed = sorted(rng.sample(indexed, sample), key=lambda pair: pair[0])
    return indexed


def summarize(results: list[Result]) -> str:
    """Killed/total per module and the survivors, as Markdown."""
    latest: dict[str, Result] = {}
    for result in results:
        latest[result.mutant] = result  # a re-run replaces the earlier verdict
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    for result in latest.values():
        by_module[result.module][result.verdict] += 1
    lines = ["| module | killed | timeout | survived | score |", "|---|---|---|---|---|"]
    total: Counter[str] = Counter()
    for module in TARGETS:
        counts = by_module.get(module)
        if not counts:
            continue
        total.update(counts)
        lines.append(_row(module, counts))
    lines.append(_row("**all**", total))
    survivors = sorted(
        (r for r in latest.values() if r.verdict == "survived"),
        key=lambda r: (list(TARGETS).index(r.module), r.lineno),
    )
    if survivors:
        lines += ["", "Survivors:", ""]
        lines += [
            f"- `{r.mutant}` line {r.lineno} [{r.operator}] {r.description}" for r in survivors
        ]
    return "\n".join(lines)


def _row(module: str, counts: Counter[str]) -> str:
    killed, timeout, survived = counts["killed"], counts["timeout"], counts["survived"]
    total = killed + timeout + survived
    score = f"{100 * (killed + timeout) / total:.0f}%" if total else "-"
    return (
        f"| {module} | {killed} | {timeout} | {survived} | {score} ({killed + timeout}/{total}) |"
    )


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0912 - one flat command line
    parser = argparse.ArgumentParser(prog="python -m tools.mutants", description=__doc__)
    parser.add_argument("--modules", nargs="*", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument(
        "--sample", type=int, default=None, help="mutants per module (0: all; default: targets.py)"
    )
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--only", nargs="*", default=[], help="mutant ids such as engine:57")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results (JSON lines)")
    parser.add_argument("--list", action="store_true", help="print the chosen mutants only")
    parser.add_argument("--report", action="store_true", help="summarize --out and stop")
    parser.add_argument("--timeout-factor", type=float, default=2.0)
    args = parser.parse_args(argv)

    if args.report:
        print(summarize(read_results(args.out)))
        return 0

    plan: dict[str, list[tuple[int, Site]]] = {}
    if args.only:
        wanted: dict[str, set[int]] = defaultdict(set)
        for mutant in args.only:
            module, _, index = mutant.partition(":")
            wanted[module].add(int(index))
        for module, indexes in wanted.items():
            all_sites = sites((REPO / TARGETS[module].path).read_text())
            plan[module] = [(i, all_sites[i]) for i in sorted(indexes)]
    else:
        for module in args.modules:
            all_sites = sites((REPO / TARGETS[module].path).read_text())
            sample = TARGETS[module].sample if args.sample is None else args.sample
            plan[module] = choose(module, all_sites, sample, args.seed)

    if args.list:
        for module, chosen in plan.items():
            for index, site in chosen:
                print(f"{module}:{index}\tline {site.lineno}\t[{site.operator}] {site.description}")
        return 0

    args.out.parent.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))  # clean up the copy
    sandbox = Sandbox(REPO)
    try:
        for module, chosen in plan.items():
            target = TARGETS[module]
            outcome, seconds, failed = sandbox.run_tests(list(target.tests), timeout=600)
            if outcome != "passed":
                print(f"{module}: the unmutated tests do not pass ({failed}); stopping")
                return 1
            timeout = max(30.0, args.timeout_factor * seconds)
            print(f"{module}: {len(chosen)} mutants, tests {seconds:.0f}s, timeout {timeout:.0f}s")
            for result in run_mutants(
                sandbox, module, target.path, chosen, list(target.tests), timeout
            ):
                append_result(args.out, result)
                print(
                    f"  {result.mutant:<14} {result.verdict:<8} {result.seconds:>5.1f}s "
                    f"line {result.lineno} [{result.operator}] {result.description}",
                    flush=True,
                )
    finally:
        sandbox.close()
    print(summarize(read_results(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

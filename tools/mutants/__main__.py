"""``python -m tools.mutants``: mutation testing of every module of the package (a report).

Examples::

    .venv/bin/python -m tools.mutants --jobs 2            # the sampled run (see docs/testing.md)
    .venv/bin/python -m tools.mutants --total 20 --jobs 2 --timeout 120 --time-limit 240  # CI
    .venv/bin/python -m tools.mutants --modules lock --sample 0   # every mutant of one module
    .venv/bin/python -m tools.mutants --only engine:57 journal:12 # re-run named mutants
    .venv/bin/python -m tools.mutants --list --modules plan       # show the mutants, run none
    .venv/bin/python -m tools.mutants --report                    # summarize the results file

Never a CI gate: the exit status is 0 whatever survives (1 only when the unmutated tests fail).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import queue
import random
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Optional, TypeVar

from .operators import Site, sites
from .runner import Result, Sandbox, append_result, read_results, run_mutant
from .targets import TARGETS

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "build" / "mutants" / "results.jsonl"
T = TypeVar("T")


def quotas(counts: dict[str, int], total: int, seed: int) -> dict[str, int]:
    """How many of ``total`` mutants each module gets: one each when there are enough, the rest
    drawn uniformly (seeded) among all the mutants, so a module's share follows its size."""
    share = dict.fromkeys(counts, 1 if total >= len(counts) else 0)
    pool = [name for name, count in counts.items() for _ in range(count - share[name])]
    rng = random.Random(f"{seed}:total")  # noqa: S311 - a reproducible sample, not a secret
    for name in rng.sample(pool, min(len(pool), total - sum(share.values()))):
        share[name] += 1
    return share


def choose(name: str, all_sites: list[Site], sample: int, seed: int) -> list[tuple[int, Site]]:
    """A seeded sample of ``sample`` mutants (all when 0), in source order."""
    indexed = list(enumerate(all_sites))
    if 0 < sample < len(indexed):
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mutants", description=__doc__)
    parser.add_argument("--modules", nargs="*", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument("--total", type=int, default=150, help="mutants in all (default 150)")
    parser.add_argument("--sample", type=int, default=None, help="mutants per module (0: all)")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--only", nargs="*", default=[], help="mutant ids such as engine:57")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results (JSON lines)")
    parser.add_argument("--list", action="store_true", help="print the chosen mutants only")
    parser.add_argument("--report", action="store_true", help="summarize --out and stop")
    parser.add_argument("--timeout-factor", type=float, default=2.0)
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds per mutant; skips the unmutated run"
    )
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested at once")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="seconds; then stop (unfinished: not counted)",
    )
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
        found = {m: sites((REPO / TARGETS[m].path).read_text()) for m in args.modules}
        counts = {m: len(s) for m, s in found.items() if s}
        share = quotas(counts, args.total, args.seed) if args.sample is None else None
        for module in counts:
            sample = args.sample if share is None else share[module]
            if sample or share is None:
                plan[module] = choose(module, found[module], sample, args.seed)

    if args.list:
        for module, chosen in plan.items():
            for index, site in chosen:
                print(f"{module}:{index}\tline {site.lineno}\t[{site.operator}] {site.description}")
        return 0

    args.out.parent.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))  # clean up the copies
    stop_at = None if args.time_limit is None else time.monotonic() + args.time_limit
    status = _execute(
        plan, args.out, max(1, args.jobs), stop_at, factor=args.timeout_factor, timeout=args.timeout
    )
    print(summarize(read_results(args.out)))
    return status


class _Copies:
    """One sandbox per job; ``halt()`` kills the test runs in flight and voids their verdicts."""

    def __init__(self, jobs: int) -> None:
        self.sandboxes = [Sandbox(REPO) for _ in range(jobs)]
        self.idle: queue.SimpleQueue[Sandbox] = queue.SimpleQueue()
        for sandbox in self.sandboxes:
            self.idle.put(sandbox)
        self.stopped = threading.Event()

    def run(self, test: Callable[[Sandbox], T]) -> Optional[T]:
        """``test`` on an idle copy; ``None`` once halted."""
        sandbox = self.idle.get()
        try:
            result = None if self.stopped.is_set() else test(sandbox)
            return None if self.stopped.is_set() else result
        finally:
            self.idle.put(sandbox)

    def halt(self) -> None:
        self.stopped.set()
        for sandbox in self.sandboxes:
            sandbox.kill_tests()

    def close(self) -> None:
        for sandbox in self.sandboxes:
            sandbox.close()


def _execute(
    plan: dict[str, list[tuple[int, Site]]],
    out: Path,
    jobs: int,
    stop_at: Optional[float],
    *,
    factor: float,
    timeout: Optional[float],
) -> int:
    """Test ``plan`` on ``jobs`` copies at once, appending each verdict to ``out``; 1 when the
    unmutated tests of a module fail. A mutant's timeout is ``factor`` times its unmutated
    tests' time, or ``timeout`` (then the unmutated tests do not run). Past ``stop_at`` the
    runs in flight are killed, uncounted."""
    copies = _Copies(jobs)
    pool = concurrent.futures.ThreadPoolExecutor(jobs)
    try:
        seconds = _unmutated(plan, copies, pool, stop_at) if timeout is None else {}
        if seconds is None:
            return 1
        if copies.stopped.is_set():
            print("time limit: reached before the unmutated tests finished; no mutant ran")
            return 0

        def one(module: str, index: int, site: Site) -> Callable[[Sandbox], Result]:
            target = TARGETS[module]
            limit = timeout or max(30.0, factor * seconds[frozenset(target.tests)])
            tests = list(target.tests)
            return lambda box: run_mutant(box, module, target.path, index, site, tests, limit)

        mutants = [
            pool.submit(copies.run, one(module, index, site))
            for module, chosen in plan.items()
            for index, site in chosen
        ]
        done = 0
        for future in _completed(mutants, stop_at, copies.halt):
            result = future.result()
            if result is None:
                continue
            done += 1
            append_result(out, result)
            print(
                f"  {result.mutant:<16} {result.verdict:<8} {result.seconds:>5.1f}s "
                f"line {result.lineno} [{result.operator}] {result.description}",
                flush=True,
            )
        if done < len(mutants):
            print(f"time limit: {len(mutants) - done} of {len(mutants)} mutants not finished")
        return 0
    finally:
        copies.halt()
        pool.shutdown(wait=True, cancel_futures=True)
        copies.close()


def _unmutated(
    plan: dict[str, list[tuple[int, Site]]],
    copies: _Copies,
    pool: concurrent.futures.ThreadPoolExecutor,
    stop_at: Optional[float],
) -> Optional[dict[frozenset[str], float]]:
    """The unmutated tests, once per set of test files: their seconds (for the timeouts), or
    ``None`` when one set fails."""
    test_sets = {frozenset(TARGETS[m].tests): list(TARGETS[m].tests) for m in plan}
    runs = {
        pool.submit(copies.run, lambda box, tests=tests: box.run_tests(tests, 900)): key
        for key, tests in test_sets.items()
    }
    seconds: dict[frozenset[str], float] = {}
    for future in _completed(runs, stop_at, copies.halt):
        ran = future.result()
        if ran is None:
            continue
        outcome, took, failed = ran
        names = [m for m in plan if frozenset(TARGETS[m].tests) == runs[future]]
        if outcome != "passed":
            print(f"{', '.join(names)}: the unmutated tests do not pass ({outcome}: {failed})")
            copies.halt()
            return None
        seconds[runs[future]] = took
        print(f"{', '.join(names)}: the unmutated tests pass in {took:.0f}s", flush=True)
    return seconds


def _completed(
    futures: Collection[concurrent.futures.Future[T]],
    stop_at: Optional[float],
    halt: Callable[[], None],
) -> Iterator[concurrent.futures.Future[T]]:
    """``futures`` as they complete; ``halt()`` once, when ``stop_at`` passes first."""
    pending = set(futures)
    while pending:
        left = None if stop_at is None else max(0.0, stop_at - time.monotonic())
        done, pending = concurrent.futures.wait(
            pending, timeout=left, return_when=concurrent.futures.FIRST_COMPLETED
        )
        if not done and stop_at is not None:
            halt()
            stop_at = None
        yield from done


if __name__ == "__main__":
    sys.exit(main())

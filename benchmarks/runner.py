"""Runs a command as a separate process and measures it: wall time, peak RSS, exit status.

Wall time is what a user waits; CPU time (user + system, from ``wait4``, which adds the
child's reaped descendants) is what the command costs, and it hardly moves when other
work shares the machine, so both are kept. Peak RSS comes from GNU time (``/usr/bin/time
-f %M``), which adds about a millisecond to every command alike; not from ``wait4``: Linux
carries a process's peak RSS across ``exec``, so a child forked from this (large) Python
process would report at least our own size. Without GNU time the RSS is reported as
unknown. Output goes to files, not pipes, so long outputs (``status --json`` of 8,192
functions) cannot block the child.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
# settings that would change what is measured (the product's own variables included)
_DROPPED_ENV = frozenset(
    {
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONPROFILEIMPORTTIME",
        "PYTHONDEVMODE",
        "PYTHONTRACEMALLOC",
        "PYTHONMALLOC",
        "PYTHONASYNCIODEBUG",
        "HOST_ROOT",
    }
)


GNU_TIME = "/usr/bin/time"
TIMEOUT = 900.0  # seconds a measured command may take before it counts as hung


@dataclass(frozen=True)
class Sample:
    seconds: float
    cpu_seconds: float
    max_rss_kib: Optional[int]
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Series:
    """Repeated runs of one command: medians, and the exit statuses seen."""

    label: str
    samples: tuple[Sample, ...]

    @property
    def median(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def cpu(self) -> float:
        return statistics.median(s.cpu_seconds for s in self.samples)

    @property
    def spread(self) -> tuple[float, float]:
        times = [s.seconds for s in self.samples]
        return min(times), max(times)

    @property
    def rss_mib(self) -> Optional[float]:
        found = [s.max_rss_kib for s in self.samples if s.max_rss_kib is not None]
        return statistics.median(found) / 1024 if found else None

    @property
    def returncodes(self) -> set[int]:
        return {s.returncode for s in self.samples}

    @property
    def last(self) -> Sample:
        return self.samples[-1]


def child_env(extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The environment of measured children: byte-code allowed, no colour, no pager.

    CI exports PYTHONDONTWRITEBYTECODE=1; a product that must compile its sources on every
    start would measure the compiler, not the product, so the children may write ``.pyc``
    (the warm-up runs do) as an installed package would have them.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _DROPPED_ENV and not k.startswith("VFIO_MANAGER_")
    }
    env["LC_ALL"] = "C.UTF-8"
    env.update(extra or {})
    return env


def _peak_kib(path: str) -> Optional[int]:
    """The last line GNU time wrote (``%M``); before it may come "Command exited with ..."."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().split()
    except OSError:
        return None
    return int(lines[-1]) if lines and lines[-1].isdigit() else None


def run(
    argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None, timeout: float = TIMEOUT
) -> Sample:
    """One child: ``argv`` with stdin from /dev/null; stdout and stderr kept as text.

    A child still running after ``timeout`` seconds is killed (exit -9): a hung benchmark
    must end, and the sections report any exit status they did not expect.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(suffix=".rss") as rss:  # fmt: skip
        wrapper = [GNU_TIME, "-f", "%M", "-o", rss.name] if os.access(GNU_TIME, os.X_OK) else []
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*wrapper, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=dict(env or child_env()),
            cwd=REPO,
        )
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Sample(
            seconds,
            usage.ru_utime + usage.ru_stime,
            _peak_kib(rss.name) if wrapper else None,
            proc.returncode,
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
        )


def repeat(
    label: str,
    argv: Sequence[str],
    *,
    reps: int,
    warmup: int = 1,
    env: Optional[Mapping[str, str]] = None,
) -> Series:
    """``warmup`` discarded runs (page cache, byte-code), then ``reps`` measured ones."""
    for _ in range(warmup):
        run(argv, env=env)
    return Series(label, tuple(run(argv, env=env) for _ in range(reps)))


def interleaved(
    commands: Mapping[str, Sequence[str]],
    *,
    reps: int,
    warmup: int = 1,
    env: Optional[Mapping[str, str]] = None,
) -> dict[str, Series]:
    """Run several commands round-robin, so a busy moment of the machine hits all of them."""
    for _ in range(warmup):
        for argv in commands.values():
            run(argv, env=env)
    samples: dict[str, list[Sample]] = {label: [] for label in commands}
    for _ in range(reps):
        for label, argv in commands.items():
            samples[label].append(run(argv, env=env))
    return {label: Series(label, tuple(found)) for label, found in samples.items()}


def product_argv() -> list[str]:
    """How a user starts the product: the ``vfio-manager`` console script of this Python.

    Falls back to ``python -m vfio_manager`` when the script is not installed next to the
    interpreter (a checkout on PYTHONPATH).
    """
    script = Path(sys.executable).with_name("vfio-manager")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "vfio_manager"]


def python_argv(code: str) -> list[str]:
    return [sys.executable, "-c", code]

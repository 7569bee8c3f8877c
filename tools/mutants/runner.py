"""Runs mutants against private copies of the repository (one per job).

The working tree is never written: the package, the tests and pyproject.toml are copied once
per job into a temporary directory, each mutant overwrites one module there, the module's tests run
in a fresh pytest process (first on ``PYTHONPATH``, no bytecode written or read from an older
mutant), and the original text is put back before the next mutant.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from .operators import Site, mutate

COPIED = ("vfio_manager", "tests", "tools", "docs", "deploy", "pyproject.toml")  # tests read all


@dataclass(frozen=True)
class Result:
    """The verdict on one mutant: ``killed``, ``survived``, ``timeout`` (counts as killed: the
    suite noticed something), or ``error`` (the mutant could not be imported, also killed)."""

    mutant: str
    module: str
    operator: str
    lineno: int
    description: str
    verdict: str
    seconds: float
    failed_test: str


class Sandbox:
    """A throw-away copy of the repository to mutate."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.root = Path(tempfile.mkdtemp(prefix="vfio-mutants-"))
        for name in COPIED:
            source = repo / name
            if source.is_dir():
                shutil.copytree(
                    source,
                    self.root / name,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".venv"),
                )
            else:
                shutil.copy2(source, self.root / name)
        self._process: Optional[subprocess.Popen[str]] = None

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def kill_tests(self) -> None:
        """Kill the test run in flight (another thread's), if any."""
        process = self._process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def run_tests(self, tests: list[str], timeout: float) -> tuple[str, float, str]:
        """(``passed``/``failed``/``timeout``, seconds, first failing test) for ``tests``."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.root)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
        command = [
            sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
            "--no-header", *tests,
        ]  # fmt: skip
        started = time.monotonic()
        with subprocess.Popen(
            command,
            cwd=self.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        ) as process:
            self._process = process
            try:
                output, _ = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                return "timeout", time.monotonic() - started, ""
            except BaseException:  # Ctrl-C or SIGTERM: take the test run down with us
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                raise
            finally:
                self._process = None
        seconds = time.monotonic() - started
        if process.returncode == 0:
            return "passed", seconds, ""
        return "failed", seconds, _first_failure(output)


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0]
    return output.strip().splitlines()[-1] if output.strip() else ""


def run_mutant(
    sandbox: Sandbox, module_name: str, module_path: str, index: int, site: Site,
    tests: list[str], timeout: float,
) -> Result:  # fmt: skip
    """One mutant of one module, tested; the module is restored after it."""
    target = sandbox.root / module_path
    original = target.read_text()
    try:
        target.write_text(mutate(original, site))
        outcome, seconds, failed = sandbox.run_tests(tests, timeout)
    finally:
        target.write_text(original)
    verdict = {"passed": "survived", "failed": "killed", "timeout": "timeout"}[outcome]
    return Result(
        mutant=f"{module_name}:{index}",
        module=module_name,
        operator=site.operator,
        lineno=site.lineno,
        description=site.description,
        verdict=verdict,
        seconds=round(seconds, 1),
        failed_test=failed,
    )


def append_result(path: Path, result: Result) -> None:
    with path.open("a") as out:
        out.write(json.dumps(asdict(result)) + "\n")


def read_results(path: Path) -> list[Result]:
    if not path.exists():
        return []
    return [Result(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]

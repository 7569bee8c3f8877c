"""The alert rules under promtool: ``python -m tests.deploy.alerts`` (tools/kubernetes/check).

The rules live once, in components/monitoring/prometheusrule.yaml; promtool reads a plain
rules file, so its ``spec.groups`` are written to ``rules.yaml`` in a temporary directory
beside a copy of alerts.test.yaml, then ``promtool check rules`` and ``promtool test rules``
run there. Exit 2 when promtool is missing (Debian's ``prometheus`` package has it).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import yaml

from tests.deploy import kustomize

HERE = Path(__file__).resolve().parent
DEPLOY = HERE.parents[1] / "deploy" / "kubernetes"
TESTS = HERE / "alerts.test.yaml"


def rule_groups() -> list[dict[str, Any]]:
    """The groups of the shipped PrometheusRule, as the overlay renders them."""
    (rule,) = [
        o for o in kustomize.render(DEPLOY / "overlays" / "monitoring")
        if o["kind"] == "PrometheusRule"
    ]  # fmt: skip
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def promtool() -> Optional[str]:
    return shutil.which("promtool")


def run(groups: list[dict[str, Any]], tests: Path = TESTS) -> subprocess.CompletedProcess[str]:
    """``promtool check rules`` then ``promtool test rules`` on ``groups``; the first failure
    or the test run's result (stdout and stderr together)."""
    binary = promtool()
    if binary is None:
        raise FileNotFoundError("promtool (Debian: apt-get install prometheus)")
    with tempfile.TemporaryDirectory(prefix="vfio-manager-alerts.") as tmp:
        directory = Path(tmp)
        (directory / "rules.yaml").write_text(
            yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8"
        )
        shutil.copy(tests, directory / tests.name)
        output = ""
        for argv in (["check", "rules", "rules.yaml"], ["test", "rules", tests.name]):
            result = subprocess.run(
                [binary, *argv], cwd=directory, capture_output=True, text=True, timeout=120,
                check=False,
            )  # fmt: skip
            output += result.stdout + result.stderr
            if result.returncode != 0:
                break
        return subprocess.CompletedProcess(result.args, result.returncode, output, "")


def main() -> int:
    if promtool() is None:
        print("promtool not found (Debian: apt-get install prometheus)", file=sys.stderr)
        return 2
    version = subprocess.run(
        [str(promtool()), "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[:1]
    print(f"{' '.join(version)}: {TESTS.relative_to(HERE.parents[1])}")
    result = run(rule_groups())
    print(result.stdout.rstrip())
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())

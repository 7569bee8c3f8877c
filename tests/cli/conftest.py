"""CLI tests drive the real click command against the fake kernel, as a user would."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import CliRunner

from tests.harness import FakeKernel
from vfio_manager.cli.main import cli


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def log_events(self) -> list[dict[str, Any]]:
        """The structlog events (JSON lines) the command wrote to stderr."""
        events = []
        for line in self.stderr.splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events


RunCli = Callable[..., Run]


def state_dir(kernel: FakeKernel) -> str:
    """The lock and journal directory of CLI runs against ``kernel`` (on the fake fs)."""
    return f"{kernel.host_root}/run/vfio-manager"


def root_args(kernel: FakeKernel) -> list[str]:
    """The global options that point the CLI at ``kernel`` (all on the fake file system)."""
    return [
        "--sysfs-root",
        kernel.sys_root,
        "--dev-root",
        kernel.dev_root,
        "--host-root",
        kernel.host_root,
        "--state-dir",
        state_dir(kernel),
        "--proc-root",
        kernel.proc_root,
        "--log-format",
        "json",
    ]


def invoke(kernel: FakeKernel, *args: str) -> Run:
    result = CliRunner().invoke(cli, [*root_args(kernel), *args], catch_exceptions=False)
    return Run(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def run(kernel: FakeKernel) -> RunCli:
    """``run("bind-all")`` against the ``kernel`` fixture."""

    def _run(*args: str) -> Run:
        return invoke(kernel, *args)

    return _run

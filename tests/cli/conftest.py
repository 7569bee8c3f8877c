"""CLI tests drive the real click command against the fake kernel, as a user would."""

from __future__ import annotations

import pytest

from tests.harness import FakeKernel
from tests.support import Run, RunCli, invoke


@pytest.fixture
def run(kernel: FakeKernel) -> RunCli:
    """``run("bind-all")`` against the ``kernel`` fixture."""

    def _run(*args: str) -> Run:
        return invoke(kernel, *args)

    return _run

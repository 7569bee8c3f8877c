"""Fixtures of the daemon's tests that drive the whole daemon against the fake kernel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.daemon.kernel_rig import KernelRig, close_rig, make_rig
from tests.harness import FakeKernel
from vfio_manager.daemon.service import DaemonOptions


@pytest.fixture
def real_state_dir(tmp_path: Path) -> str:
    """The daemon's and the CLI's state directory, on the real disk (see DAEMON_REAL_STATE)."""
    return str(tmp_path / "state")


@pytest.fixture
def make_kernel_rig(real_state_dir: str, kernel: FakeKernel) -> Iterator[Any]:
    """``make_kernel_rig(options)``: the daemon against ``kernel``; closed at teardown."""
    made: list[KernelRig] = []

    def make(options: Optional[DaemonOptions] = None, **kwargs: Any) -> KernelRig:
        rig = make_rig(kernel, real_state_dir, options, **kwargs)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        close_rig(rig)

"""Shared fixtures: the fake kernel, real machines' snapshots, and a guard for the real /sys.

- ``kernel``: an empty :class:`~tests.harness.FakeKernel` (IOMMU on, release 6.1.0-test) on
  pyfakefs' ``fs``; everything lives under /node, never under the real /sys or /dev.
- ``snapshot_kernel("q35-boot")``: a fake rebuilt from a recorded machine. Snapshots are looked
  up in $VFIO_MANAGER_SNAPSHOTS (if set), then tests/fixtures/snapshots (the copy kept in this
  repository), then ../shared/snapshots beside the checkout. They are read from the real disk
  once per session, before pyfakefs hides it.
- ``state_dir``: a private (0700) state directory on the real disk.
- ``uevent_pair``: a datagram socket and the uevent source reading what it sends.
- an autouse guard: a test that opens a real path under /sys, /dev or /proc for writing (or
  runs modprobe & co. for real) fails (see tests/harness/audit.py); ``e2e``-marked tests, which
  run inside the QEMU guest, are exempt.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

import vfio_manager
from tests.harness import FakeKernel, audit
from tests.support import open_uevent_pair
from vfio_manager.kernel.uevents import DatagramUeventSource

# Import every product module before any fake filesystem starts. The CLI imports most of
# them lazily (cold start); a module first imported inside a pyfakefs test keeps that test's
# fake `os` after it ends, and the next test then fails inside pyfakefs ("assert p is not
# None" in its patcher property).
# Subpackages' modules too (vfio_manager.host.preflight, ...): a submodule first imported
# in a test is dropped from sys.modules at its end while its package keeps the attribute,
# so `from vfio_manager.host import preflight` and `from vfio_manager.host.preflight import
# X` then see two different classes.
for _module in pkgutil.walk_packages(vfio_manager.__path__, "vfio_manager."):
    if not _module.name.endswith(".__main__"):
        importlib.import_module(_module.name)

SnapshotKernel = Callable[..., FakeKernel]


def snapshot_dirs() -> list[Path]:
    """Where snapshots are searched, first match wins."""
    dirs = []
    env = os.environ.get("VFIO_MANAGER_SNAPSHOTS")
    if env:
        dirs.append(Path(env))
    dirs.append(Path(__file__).parent / "fixtures" / "snapshots")
    dirs.append(Path(__file__).parents[1].parent / "shared" / "snapshots")
    return dirs


def load_snapshot_files() -> dict[str, dict[str, Any]]:
    """``{name: parsed JSON}`` for every snapshot found (real disk: call before pyfakefs)."""
    found: dict[str, dict[str, Any]] = {}
    for directory in snapshot_dirs():
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.json")):
            if path.stem not in found:
                with path.open(encoding="utf-8") as handle:
                    found[path.stem] = json.load(handle)
    return found


@pytest.fixture(scope="session")
def snapshot_data() -> dict[str, dict[str, Any]]:
    """All snapshots, read once from the real disk (session fixtures run before ``fs``)."""
    return load_snapshot_files()


@pytest.fixture
def kernel(fs: FakeFilesystem) -> Iterator[FakeKernel]:
    k = FakeKernel(fs, release="6.1.0-test", iommu=True)
    yield k
    k.close()


@pytest.fixture
def snapshot_kernel(
    fs: FakeFilesystem, snapshot_data: dict[str, dict[str, Any]]
) -> Iterator[SnapshotKernel]:
    made: list[FakeKernel] = []

    def load(name: str, *, host_root: str = "/node") -> FakeKernel:
        if name not in snapshot_data:
            where = ", ".join(str(d) for d in snapshot_dirs())
            raise LookupError(f"no snapshot {name!r} in {where}")
        k = FakeKernel.from_snapshot(fs, snapshot_data[name], host_root=host_root)
        made.append(k)
        return k

    yield load
    for k in made:
        k.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A private (0700) state directory on the real disk."""
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def uevent_pair() -> Iterator[tuple[socket.socket, DatagramUeventSource]]:
    """A sender and the uevent source that reads it; both closed at teardown."""
    sender, source = open_uevent_pair()
    yield sender, source
    sender.close()
    source.close()


@pytest.fixture(autouse=True)
def _writes_from_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs write from threads: a forked writer would write to its own copy of
    the in-memory fake kernel. Process tests pass their own environment."""
    monkeypatch.setenv("VFIO_MANAGER_WRITER", "thread")


@pytest.fixture(autouse=True)
def _no_real_system_writes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail any test that changed (or tried to change) the real /sys, /dev or /proc.

    Tests marked ``e2e`` (the QEMU tier, which must write the guest's real /sys) are exempt.
    """
    if request.node.get_closest_marker("e2e") is not None:
        yield
        return
    audit.take_violations()
    with audit.guard():
        yield
    violations = audit.take_violations()
    if violations:
        pytest.fail("touched the real machine: " + "; ".join(violations), pytrace=False)

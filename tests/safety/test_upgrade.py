"""Upgrade and rollback: the state directory as earlier writers left it (tests/fixtures/state)
is settled by this release; a later release's record is refused, said, and kept as it is."""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path

import pytest

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import VFIO, invoke, pending, state, state_dir
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import Direction
from vfio_manager.kernel.model import PciFunction
from vfio_manager.safety.journal import Journal

BDF = "0000:01:00.0"
NATIVE = ("rebellions", None)
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "state"
# read before pyfakefs hides the real file system: {format: {relative path: bytes}}
FORMATS = {
    d.name: {str(f.relative_to(d)): f.read_bytes() for f in d.rglob("*") if f.is_file()}
    for d in sorted(FIXTURES.iterdir())
    if d.is_dir()
}
EARLIER = sorted(name for name in FORMATS if name.startswith("schema-1-"))
NEWER = "written by a newer vfio-manager (record schema 2; this release reads schema 1)"


def lay(kernel: FakeKernel, fmt: str, only: str = "") -> dict[str, bytes]:
    """The files of ``fmt`` (those whose name starts with ``only``) in the node's state dir."""
    laid = {name: data for name, data in FORMATS[fmt].items() if name.startswith(only)}
    for name, data in laid.items():
        path = posixpath.join(state_dir(kernel), name)
        os.makedirs(posixpath.dirname(path), mode=0o700, exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
    return laid


def on_disk(kernel: FakeKernel) -> dict[str, bytes]:
    """The records and intents in the state directory, by relative path."""
    found = {}
    for root, _dirs, names in os.walk(state_dir(kernel)):
        for name in names:
            path = posixpath.join(root, name)
            with open(path, "rb") as handle:
                found[posixpath.relpath(path, state_dir(kernel))] = handle.read()
    found.pop("lock", None)  # the node lock, not a record
    return found


def killed_after_its_first_write(kernel: FakeKernel) -> str:
    """An NPU on its native driver with vfio-pci's override set, as a bind killed then."""
    (npu,) = npu_node(kernel, count=1)
    assert npu == BDF
    with open(f"{kernel.sys_root}/bus/pci/devices/{npu}/driver_override", "w") as handle:
        handle.write("vfio-pci\n")
    return npu


def test_every_earlier_format_has_a_transition_and_an_origin() -> None:
    assert len(EARLIER) >= 3
    for fmt in [*EARLIER, "schema-2"]:
        assert sorted(FORMATS[fmt]) == [f"journal-{BDF}.json", f"origin-{BDF}.json"], fmt


@pytest.mark.parametrize("fmt", EARLIER)
def test_an_earlier_interrupted_bind_is_finished_and_its_origin_brings_it_home(
    kernel: FakeKernel, fmt: str
) -> None:
    npu = killed_after_its_first_write(kernel)
    lay(kernel, fmt)
    result = invoke(kernel, "bind-all")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert state(kernel, npu) == VFIO
    assert pending(kernel) == []
    assert not [n for n in on_disk(kernel) if n.endswith(".corrupt")]
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert state(kernel, npu) == NATIVE


@pytest.mark.parametrize("fmt", EARLIER)
def test_an_earlier_interrupted_bind_is_rolled_back(kernel: FakeKernel, fmt: str) -> None:
    npu = killed_after_its_first_write(kernel)
    lay(kernel, fmt)
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert state(kernel, npu) == NATIVE
    assert pending(kernel) == []
    assert not [n for n in on_disk(kernel) if n.endswith(".corrupt")]


def test_an_earlier_intent_is_honoured_and_cleared_by_a_bind(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    lay(kernel, "intent-1")
    result = invoke(kernel, "status")
    assert result.exit_code == 0
    assert (
        f"intent: {npu} left on the host by intent by `vfio-manager unbind {npu}` at "
        "2026-11-30T00:00:02Z" in result.stdout
    )
    result = invoke(kernel, "bind", npu)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert f"intent/{npu}" not in on_disk(kernel)


@pytest.mark.parametrize("command", ["bind-all", "unbind-all"])
def test_a_newer_transition_record_is_refused_and_kept(kernel: FakeKernel, command: str) -> None:
    npu = killed_after_its_first_write(kernel)
    laid = lay(kernel, "schema-2")
    kernel.clear_writes()
    result = invoke(kernel, command)
    assert result.exit_code == 1
    assert NEWER in result.stdout
    assert "it is kept where it is" in result.stdout
    assert kernel.writes == []
    assert on_disk(kernel) == laid
    assert state(kernel, npu) == ("rebellions", "vfio-pci")


def test_a_newer_origin_is_refused_and_kept(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1, driver="vfio-pci")
    laid = lay(kernel, "schema-2", only="origin-")
    kernel.clear_writes()
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 1
    assert f"its origin record was {NEWER}" in result.stdout
    assert kernel.writes == []
    assert on_disk(kernel) == laid
    assert state(kernel, npu) == VFIO


def test_a_bind_does_not_overwrite_a_newer_origin(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    laid = lay(kernel, "schema-2", only="origin-")
    kernel.clear_writes()
    result = invoke(kernel, "bind-all")
    assert result.exit_code == 1
    assert "was written by a newer vfio-manager (record schema 2" in result.stdout
    assert "it is not overwritten" in result.stdout
    assert kernel.writes == []
    assert {n: d for n, d in on_disk(kernel).items() if n in laid} == laid
    assert state(kernel, npu) == NATIVE


def test_the_journal_keeps_a_newer_record_it_is_asked_to_drop(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    for name, data in FORMATS["schema-2"].items():
        (directory / name).write_bytes(data)
    journal = Journal(str(directory))
    journal.drop_transition(BDF)
    journal.forget_origin(BDF)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == FORMATS["schema-2"]


def test_this_release_writes_the_newest_earlier_format(tmp_path: Path) -> None:
    """A writer that changes what it writes adds a fixture directory (tests/fixtures/state)."""
    directory = tmp_path / "state"
    journal = Journal(str(directory), now=lambda: "2026-11-30T00:00:00+00:00")
    npu = PciFunction(PciAddress.parse(BDF), 0x1EFF, 0x1220, 0x120000, driver="rebellions")
    journal.record_start(npu, Direction.TO_VFIO)
    newest = FORMATS[EARLIER[-1]]
    for name in newest:
        written = json.loads((directory / name).read_text())
        assert {**written, "pid": 4242} == json.loads(newest[name]), name


@pytest.mark.parametrize("prefix", ["journal", "origin", "sriov"])
def test_a_newer_record_is_reported_as_the_kind_it_is(tmp_path: Path, prefix: str) -> None:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    record = {"version": 99, "bdf": BDF}
    (directory / f"{prefix}-{BDF}.json").write_text(json.dumps(record))
    journal = Journal(str(directory))
    if prefix == "journal":
        journal.pending()
    else:
        {"origin": journal.original, "sriov": journal.sriov}[prefix](BDF)
    (kept,) = journal.take_set_aside()
    assert kept.newer_schema == 99
    assert kept.record == {"journal": "transition"}.get(prefix, prefix)
    assert (directory / f"{prefix}-{BDF}.json").exists(), "kept, never moved"

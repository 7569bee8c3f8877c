"""A state directory that stops taking writes (EROFS, EIO) never costs the report.

Each journal call on the write path can fail: the listing of pending records, dropping a
moot record, reading or dropping an origin, the record written before the first write, the
removal once a function arrived. Each failure is a
per-function outcome or a note, with exit code 1, and the summary (text or the one JSON
document) is always printed; a function whose record could not be written before its
first write is refused, and nothing is written to it. The faults are injected at the state
directory's gateway, the one place the journal's files are touched.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import (
    HOST,
    VFIO,
    Run,
    invoke,
    named_bdf,
    pending,
    plant_record,
    state,
    state_dir,
)
from vfio_manager.safety.statedir import StateDir

Match = Callable[[str], bool]


def fail(
    monkeypatch: pytest.MonkeyPatch, method: str, err: int, when: Match = lambda name: True
) -> list[str]:
    """Make ``StateDir.<method>(name, ...)`` raise ``err`` for names ``when`` accepts;
    return the list of names it failed for."""
    real = getattr(StateDir, method)
    failed: list[str] = []

    def failing(self: StateDir, name: str, *args: Any, **kwargs: Any) -> Any:
        if when(name):
            failed.append(name)
            raise OSError(err, os.strerror(err))
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(StateDir, method, failing)
    return failed


def records(name: str) -> bool:
    return name.startswith(("journal-", "origin-"))


def writes_to(kernel: FakeKernel, bdf: str) -> int:
    return sum(1 for w in kernel.writes if named_bdf(w.path, w.data) == bdf)


def one_document(result: Run) -> dict[str, Any]:
    doc = json.loads(result.stdout)  # exactly one document: anything else fails to parse
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("err", [errno.EROFS, errno.EIO])
def test_bind_all_reports_every_function_when_records_cannot_be_removed(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    bdfs = npu_node(kernel, count=2)
    failed = fail(monkeypatch, "remove", err, records)
    result = invoke(kernel, "bind-all", "--json")
    assert failed
    assert result.exit_code == 1
    assert all(state(kernel, bdf) == VFIO for bdf in bdfs)
    doc = one_document(result)
    assert doc["ok"] is False
    for function in doc["functions"]:
        assert function["outcome"] == "changed"
        assert os.strerror(err) in function["journal_error"]
        assert "nothing was written" not in function["journal_error"]
        assert "kept" in function["journal_error"]
    assert pending(kernel) == bdfs  # kept; the next run finds them converged and drops them
    monkeypatch.undo()
    again = invoke(kernel, "bind-all")
    assert again.exit_code == 0, again.stdout
    assert pending(kernel) == []


def test_unbind_all_prints_its_summary_when_records_cannot_be_removed(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    bdfs = npu_node(kernel, count=2)
    assert invoke(kernel, "bind-all").exit_code == 0
    fail(monkeypatch, "remove", errno.EROFS, records)
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 1
    assert all(state(kernel, bdf) == HOST for bdf in bdfs)
    assert "2 changed, 0 converged, 0 refused, 0 failed" in result.stdout
    assert result.stdout.count("JOURNAL NOT UPDATED") == 2


@pytest.mark.parametrize("as_json", [False, True])
def test_a_moot_record_that_cannot_be_dropped_is_a_note_not_an_abort(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    (npu,) = npu_node(kernel, count=1)
    gone = "0000:09:00.0"
    plant_record(kernel, gone, vendor_device="1eff:1220", original_driver="rebellions")
    fail(monkeypatch, "remove", errno.EROFS, lambda name: gone in name)
    result = invoke(kernel, "bind-all", *(["--json"] if as_json else []))
    assert result.exit_code == 1
    assert state(kernel, npu) == VFIO
    if as_json:
        doc = one_document(result)
        assert doc["ok"] is False
        assert [f["outcome"] for f in doc["functions"]] == ["changed"]
        text = " ".join(doc["notes"])
    else:
        assert "1 changed, 0 converged, 0 refused, 0 failed" in result.stdout
        text = result.stdout
    assert f"{gone}: its moot record could not be dropped" in text
    assert "Read-only file system" in text
    assert pending(kernel) == [gone]


def test_an_origin_for_another_device_that_cannot_be_dropped_is_a_note(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    (npu,) = npu_node(kernel, count=1, driver="vfio-pci")
    directory = state_dir(kernel)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    origin = posixpath.join(directory, f"origin-{npu}.json")
    with open(origin, "w", encoding="utf-8") as handle:
        json.dump(
            {
                "version": 1,
                "record": "origin",
                "bdf": npu,
                "direction": "vfio",
                "vendor_device": "1af4:1000",
                "original_driver": "virtio-pci",
                "original_override": None,
                "steps_done": [],
                "pid": 1,
                "origin_created": False,
            },
            handle,
        )
    fail(monkeypatch, "remove", errno.EIO, lambda name: name.startswith("origin-"))
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 1
    assert state(kernel, npu) == HOST  # from modules.alias: the record is another device's
    assert "1 changed" in result.stdout
    assert f"{npu}: its origin record could not be read" in result.stdout
    assert os.path.exists(origin)


def test_a_record_that_cannot_be_written_refuses_that_function_only(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = npu_node(kernel, count=2)
    fail(monkeypatch, "replace", errno.EROFS, lambda name: first in name)
    kernel.clear_writes()
    result = invoke(kernel, "bind-all", "--json")
    assert result.exit_code == 1
    assert writes_to(kernel, first) == 0, "nothing is written before its record is"
    assert state(kernel, first) == HOST
    assert state(kernel, second) == VFIO
    outcomes = {f["bdf"]: f for f in one_document(result)["functions"]}
    assert outcomes[first]["outcome"] == "refused"
    assert "Read-only file system" in outcomes[first]["reason"]
    assert "nothing was written" in outcomes[first]["remedy"]
    assert outcomes[second]["outcome"] == "changed"


def test_a_journal_that_cannot_be_listed_refuses_the_run_before_any_write(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    npu_node(kernel, count=1)
    directory = state_dir(kernel)
    os.makedirs(directory, mode=0o700, exist_ok=True)

    def unlistable(self: StateDir) -> list[str]:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(StateDir, "names", unlistable)
    kernel.clear_writes()
    result = invoke(kernel, "bind-all")
    assert result.exit_code == 1
    assert kernel.writes == []
    assert "cannot list the journal" in result.stderr
    assert "remedy:" in result.stderr

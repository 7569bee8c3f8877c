"""``--json`` prints exactly one JSON document on stdout, whatever the exit code.

A script that runs ``vfio-manager bind-all --json | jq`` must be able to read why a run did
not happen: a usage error (exit 2, click's own included), a host that is not ready (exit 3),
a lock held by another run, a named function that is missing or not selected (exit 1).
Each prints ``{"error": {"code", "message", "remedy"}}`` (the human message stays on stderr).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.harness import FakeKernel
from tests.harness.topologies import HOST_NIC, npu_node
from tests.support import REAL_STATE, Run, RunCli, invoke
from vfio_manager.safety.lock import NodeLock


def error_of(result: Run, code: int) -> dict[str, Any]:
    assert result.exit_code == code, result.stdout + result.stderr
    doc = json.loads(result.stdout)  # exactly one document: anything else fails to parse
    error: dict[str, Any] = doc["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["remedy"], str)
    assert error["remedy"]
    assert "error" in result.stderr.lower(), "the human message stays on stderr"
    return error


USAGE_ERRORS = [
    pytest.param(["bind", "zz:zz.z", "--json"], "zz:zz.z", id="malformed-bdf"),
    pytest.param(["bind", "--json", "0000:01:00.9"], "0000:01:00.9", id="function-9"),
    pytest.param(["bind-all", "--json", "--vendor", "xyz"], "xyz", id="bad-vendor"),
    pytest.param(["status", "--json", "--device-id", "0x1ffff"], "0x1ffff", id="bad-device-id"),
    pytest.param(["check", "--json", "--class", "zz"], "zz", id="bad-class"),
    pytest.param(["bind-all", "--json", "--no-such-option"], "--no-such-option", id="unknown"),
    pytest.param(["bind", "--json"], "BDF", id="missing-bdf"),
    pytest.param(["--timeout", "nan", "bind-all", "--json"], "nan", id="bad-global-value"),
    pytest.param(["unbind-all", "--json", "--force=yes"], "--force", id="flag-with-value"),
]


@pytest.mark.parametrize(("argv", "named"), USAGE_ERRORS)
def test_usage_errors_print_one_error_document(
    kernel: FakeKernel, run: RunCli, argv: list[str], named: str
) -> None:
    npu_node(kernel, count=1)
    error = error_of(run(*argv), 2)
    assert named in error["message"]
    assert kernel.writes == []


def test_without_json_a_usage_error_prints_nothing_on_stdout(run: RunCli) -> None:
    result = run("bind", "zz:zz.z")
    assert result.exit_code == 2
    assert result.stdout == ""


def test_a_host_that_is_not_ready_prints_an_error_document_with_the_checks(
    kernel: FakeKernel, run: RunCli
) -> None:
    npu_node(kernel, count=1, vfio_loaded=False)
    error = error_of(run("bind-all", "--no-load-modules", "--json"), 3)
    assert "not ready" in error["message"]
    failing = [c["name"] for c in error["checks"]]
    assert failing
    assert all(not c["ok"] for c in error["checks"])
    assert kernel.writes == []


@pytest.mark.parametrize(
    ("bdf", "words"),
    [(HOST_NIC, "not selected"), ("0000:77:00.0", "no PCI function")],
    ids=["not-selected", "not-found"],
)
def test_a_named_function_outside_the_selection_or_missing_prints_an_error_document(
    kernel: FakeKernel, run: RunCli, bdf: str, words: str
) -> None:
    npu_node(kernel, count=1)
    for command in ("bind", "unbind"):
        error = error_of(run(command, bdf, "--json"), 1)
        assert words in error["message"]
        assert bdf in error["message"]
    assert kernel.writes == []


@pytest.mark.parametrize("fs", REAL_STATE, indirect=True)
def test_a_lock_timeout_prints_an_error_document_naming_the_holder(
    tmp_path: Path, fs: object, kernel: FakeKernel
) -> None:
    del fs
    npu_node(kernel, count=1)
    state_dir = str(tmp_path / "state")
    with NodeLock(state_dir, timeout=1, command="vfio-manager unbind-all"):
        result = invoke(
            kernel, "--state-dir", state_dir, "--lock-timeout", "0.2", "bind-all", "--json"
        )
    error = error_of(result, 1)
    assert "gave up after 0.2s" in error["message"]
    assert error["holder"]["command"] == "vfio-manager unbind-all"
    assert kernel.writes == []


def test_an_unusable_state_dir_prints_an_error_document(kernel: FakeKernel, run: RunCli) -> None:
    npu_node(kernel, count=1)
    blocker = f"{kernel.host_root}/file"
    Path(blocker).write_text("")
    result = invoke(kernel, "--state-dir", f"{blocker}/state", "bind-all", "--json")
    error = error_of(result, 1)
    assert blocker in error["remedy"]

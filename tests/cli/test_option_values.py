"""Option and environment values that used to be misread, or silently replaced by defaults.

- ``--class 0x12`` was read as class 0x0012: a class is 4 hex digits (base class and
  subclass) or 6 (with the programming interface), nothing else;
- ``VFIO_MANAGER_STATE_DIR=""`` (and the other root and directory variables) fell back to
  the defaults, so an unset-by-mistake variable pointed a run at the real /sys or
  /run/vfio-manager: an empty value is a usage error, as an empty option is;
- a state directory under a regular file suggested removing a path that does not exist;
- the note about an unreadable journal record said where the native driver comes from
  wrongly when an origin record exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import Run, RunCli, invoke, plant_record, root_args, state_dir
from vfio_manager.cli.main import cli


@pytest.mark.parametrize("value", ["0x12", "12", "0x1", "0x120", "0x12000", "0x1200000", "0x"])
def test_a_class_of_other_than_4_or_6_digits_is_refused(run: RunCli, value: str) -> None:
    result = run("status", "--class", value)
    assert result.exit_code == 2
    assert "4 or 6" in result.stderr


@pytest.mark.parametrize(
    ("value", "selected"),
    [("0x1200", True), ("1200", True), ("0X120000", True), ("120000", True), ("0x0012", False)],
)
def test_a_class_of_4_or_6_digits_is_accepted(
    kernel: FakeKernel, run: RunCli, value: str, selected: bool
) -> None:
    (npu,) = npu_node(kernel, count=1)
    result = run("status", "--json", "--class", value)
    assert result.exit_code == 0, result.stderr
    assert [d["bdf"] for d in result.json()["devices"]] == ([npu] if selected else [])


ROOTS = [
    ("--sysfs-root", "VFIO_MANAGER_SYSFS_ROOT"),
    ("--dev-root", "VFIO_MANAGER_DEV_ROOT"),
    ("--host-root", "HOST_ROOT"),
    ("--state-dir", "VFIO_MANAGER_STATE_DIR"),
    ("--proc-root", "VFIO_MANAGER_PROC_ROOT"),
]


def _without(args: list[str], option: str) -> list[str]:
    at = args.index(option)
    return args[:at] + args[at + 2 :]


@pytest.mark.parametrize(("option", "variable"), ROOTS)
@pytest.mark.parametrize("command", [["status"], ["bind-all"], ["unbind-all", "--dry-run"]])
def test_an_empty_variable_is_refused_not_replaced_by_the_default(
    kernel: FakeKernel, option: str, variable: str, command: list[str]
) -> None:
    npu_node(kernel, count=1)
    args = _without(root_args(kernel), option)
    result = CliRunner().invoke(cli, [*args, *command], env={variable: ""})
    assert result.exit_code == 2, result.output
    assert variable in result.stderr
    assert kernel.writes == []


@pytest.mark.parametrize(("option", "variable"), ROOTS)
def test_an_empty_option_is_refused(kernel: FakeKernel, option: str, variable: str) -> None:
    del variable
    args = _without(root_args(kernel), option)
    result = CliRunner().invoke(cli, [*args, option, "", "status"])
    assert result.exit_code == 2, result.output
    assert option in result.stderr


def test_an_empty_writer_variable_is_refused(kernel: FakeKernel) -> None:
    result = CliRunner().invoke(
        cli, [*root_args(kernel), "status"], env={"VFIO_MANAGER_WRITER": ""}
    )
    assert result.exit_code == 2
    assert "VFIO_MANAGER_WRITER" in result.stderr


@pytest.mark.parametrize("below", ["x", "x/y"])
def test_a_state_dir_under_a_regular_file_names_that_file(kernel: FakeKernel, below: str) -> None:
    npu_node(kernel, count=1)
    blocker = f"{kernel.host_root}/afile"
    Path(blocker).write_text("")
    result: Run = invoke(kernel, "--state-dir", f"{blocker}/{below}", "bind-all")
    assert result.exit_code == 1
    assert kernel.writes == []
    remedy = result.stderr.split("remedy:", 1)[1]
    assert blocker in remedy
    assert f"remove {blocker}/" not in remedy, "never suggest removing a path that is not there"
    assert "a regular file, not a directory" in result.stderr


def test_an_unreadable_record_names_the_origin_record_as_the_native_drivers_source(
    kernel: FakeKernel,
) -> None:
    first, second = npu_node(kernel, count=2)
    assert invoke(kernel, "bind-all").exit_code == 0  # origin records: rebellions
    directory = state_dir(kernel)
    for bdf in (first, second):
        Path(directory, f"journal-{bdf}.json").write_text("{")
    os.unlink(os.path.join(directory, f"origin-{second}.json"))
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 0, result.stdout
    lines = result.stdout.splitlines()
    (about_first,) = [line for line in lines if line.startswith(f"journal: {first}: its native")]
    assert "its origin record (rebellions)" in about_first
    (about_second,) = [line for line in lines if line.startswith(f"journal: {second}: it has")]
    assert "no readable origin record" in about_second
    assert "modules.alias" in about_second
    assert kernel.driver_of(first) == kernel.driver_of(second) == "rebellions"


def test_a_readable_record_adds_no_note_about_the_native_drivers_source(
    kernel: FakeKernel,
) -> None:
    """Only an unreadable transition record makes the origin record's say worth a note."""
    first, second = npu_node(kernel, count=2)
    assert invoke(kernel, "bind-all").exit_code == 0
    plant_record(kernel, first, vendor_device="1eff:1220", direction="vfio")
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 0, result.stdout
    assert "its native driver comes from" not in result.stdout
    assert kernel.driver_of(first) == kernel.driver_of(second) == "rebellions"


def test_the_defaults_help_shows_are_those_docs_cli_documents() -> None:
    """--parallel, --timeout and --lock-timeout: what an operator reads in docs/cli.md."""
    table = (Path(__file__).parents[2] / "docs" / "cli.md").read_text(encoding="utf-8")
    shown = " ".join(CliRunner().invoke(cli, ["--help"]).output.split())
    for option, default in (("--parallel", "8"), ("--timeout", "30"), ("--lock-timeout", "60")):
        assert f"| `{option}` | {default} |" in table
        after = shown[shown.index(f"{option} ") :]
        assert after[after.index("[default: ") :].startswith(f"[default: {default}")


@pytest.mark.parametrize("option", ["--timeout", "--lock-timeout"])
def test_a_deadline_is_at_most_a_day(run: RunCli, option: str) -> None:
    """A longer one is a typo (or a way to disable the deadline): refused, saying the bounds."""
    refused = run(option, "86400.5", "status")
    assert refused.exit_code == 2
    assert "'86400.5' is not between" in refused.stderr
    assert "and 86400 seconds" in refused.stderr
    assert run(option, "86400", "status").exit_code == 0

"""The command line around the daemon: one environment configures every command, `daemon`'s
options are checked before anything starts, and `status --check --wait` waits or says no."""

from __future__ import annotations

from click.testing import CliRunner

from tests.harness import FakeKernel
from tests.harness.topologies import HOST_NIC, npu_node
from tests.support import Run, RunCli, root_args
from vfio_manager.cli.main import cli


def invoke_env(kernel: FakeKernel, env: dict[str, str], *args: str) -> Run:
    result = CliRunner().invoke(cli, [*root_args(kernel), *args], env=env, catch_exceptions=False)
    return Run(result.exit_code, result.stdout, result.stderr)


NIC_ENV = {
    "VFIO_MANAGER_VENDOR": "0x8086",
    "VFIO_MANAGER_CLASS": "0x020000",
    "VFIO_MANAGER_DEVICE_ID": "0x10d4, 0x10d3",
}


def test_the_selection_comes_from_the_environment(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    result = invoke_env(kernel, NIC_ENV, "status", "--json")
    assert result.exit_code == 0, result.stderr
    assert [d["bdf"] for d in result.json()["devices"]] == [HOST_NIC]


def test_the_environment_selects_for_writing_commands_too(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    result = invoke_env(kernel, NIC_ENV, "bind-all", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    assert [f["bdf"] for f in result.json()["functions"]] == [HOST_NIC]
    assert kernel.writes == []


def test_an_option_wins_over_the_environment(kernel: FakeKernel) -> None:
    bdfs = npu_node(kernel, count=1)
    result = invoke_env(
        kernel, NIC_ENV, "status", "--json", "--vendor", "0x1eff", "--class", "0x120000",
        "--device-id", "0x1220",
    )  # fmt: skip
    assert [d["bdf"] for d in result.json()["devices"]] == bdfs


def test_a_malformed_device_id_in_the_environment_is_a_usage_error(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    result = invoke_env(kernel, {"VFIO_MANAGER_DEVICE_ID": "0x1220,zz"}, "status")
    assert result.exit_code == 2
    assert "'zz' is not a valid device ID" in result.stderr


def test_daemon_refuses_a_malformed_listen_address_before_starting(
    kernel: FakeKernel, run: RunCli
) -> None:
    npu_node(kernel, count=1)
    result = run("daemon", "--listen", "localhost")
    assert result.exit_code == 2
    assert "is not ADDR:PORT" in result.stderr
    assert kernel.writes == []


def test_daemon_refuses_a_malformed_exclude_from_the_environment(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    result = invoke_env(kernel, {"VFIO_MANAGER_EXCLUDE": "0000:01:00.0,01:00"}, "daemon")
    assert result.exit_code == 2
    assert "'01:00' is not a PCI address" in result.stderr
    assert kernel.writes == []


def test_daemon_options_are_documented_with_their_environment(run: RunCli) -> None:
    result = run("daemon", "--help")
    assert result.exit_code == 0
    for option, env in (
        ("--resync-interval", "VFIO_MANAGER_RESYNC_INTERVAL"),
        ("--ready-file", "VFIO_MANAGER_READY_FILE"),
        ("--listen", "VFIO_MANAGER_LISTEN"),
        ("--on-exit", "VFIO_MANAGER_ON_EXIT"),
        ("--exclude", "VFIO_MANAGER_EXCLUDE"),
        ("--nfd-features-file", "VFIO_MANAGER_NFD_FEATURES_FILE"),
        ("--validation-file", "VFIO_MANAGER_VALIDATION_FILE"),
        ("--vendor", "VFIO_MANAGER_VENDOR"),
        ("--device-id", "VFIO_MANAGER_DEVICE_ID"),
    ):
        assert option in result.stdout
        assert env in result.stdout.replace("\n", " ").replace("  ", " ") or env in result.stdout


def test_status_wait_returns_at_once_when_converged(kernel: FakeKernel, run: RunCli) -> None:
    npu_node(kernel, count=2, driver="vfio-pci")
    result = run("status", "--check", "--wait", "300")
    assert result.exit_code == 0, result.stderr
    assert "vfio-pci" in result.stdout


def test_status_wait_gives_up_with_exit_1_when_time_runs_out(
    kernel: FakeKernel, run: RunCli
) -> None:
    npu_node(kernel, count=1)
    result = run("status", "--check", "--wait", "0.2", "--json")
    assert result.exit_code == 1
    assert result.json()["devices"][0]["driver"] == "rebellions"


def test_status_wait_needs_check(kernel: FakeKernel, run: RunCli) -> None:
    npu_node(kernel, count=1)
    result = run("status", "--wait", "5")
    assert result.exit_code == 2
    assert "--wait needs --check" in result.stderr

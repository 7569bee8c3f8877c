"""The selection rules on every command: --product, --bdf, --numa-node, --per-numa-node and
--exclude (each with its environment variable), the same for bind, unbind, bind-all,
unbind-all, status, check, kubevirt-config, daemon and the vfio-manage drop-in. An excluded
function is never planned, not even by --dry-run."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tests.cli.test_compat import manage_on
from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import Run, RunCli, root_args
from vfio_manager.cli.main import cli

COMMANDS = [
    "bind", "unbind", "bind-all", "unbind-all", "status", "check", "kubevirt-config", "daemon",
]  # fmt: skip
RULES = [
    ("--product", "VFIO_MANAGER_PRODUCT"),
    ("--bdf", "VFIO_MANAGER_BDF"),
    ("--numa-node", "VFIO_MANAGER_NUMA_NODE"),
    ("--per-numa-node", "VFIO_MANAGER_PER_NUMA_NODE"),
    ("--exclude", "VFIO_MANAGER_EXCLUDE"),
]


def invoke_env(kernel: FakeKernel, env: dict[str, str], *args: str) -> Run:
    result = CliRunner().invoke(cli, [*root_args(kernel), *args], env=env, catch_exceptions=False)
    return Run(result.exit_code, result.stdout, result.stderr)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_every_rule_and_its_variable(run: RunCli, command: str) -> None:
    text = run(command, "--help").stdout.replace("\n", " ")
    for option, env in RULES:
        assert option in text
        assert env in " ".join(text.split()), f"{command} {option}"


def test_a_dry_run_never_plans_an_excluded_function(kernel: FakeKernel) -> None:
    first, second = npu_node(kernel, count=2)
    env = {"VFIO_MANAGER_EXCLUDE": first}
    result = invoke_env(kernel, env, "bind-all", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    assert [f["bdf"] for f in result.json()["functions"]] == [second]
    named = invoke_env(kernel, env, "bind", first, second, "--dry-run", "--json")
    assert [f["bdf"] for f in named.json()["functions"]] == [second]
    assert kernel.writes == []


def test_an_excluded_function_is_left_alone_and_not_checked(kernel: FakeKernel) -> None:
    first, second = npu_node(kernel, count=2)
    assert invoke_env(kernel, {}, "bind-all", "--exclude", first).exit_code == 0
    assert (kernel.driver_of(first), kernel.driver_of(second)) == ("rebellions", "vfio-pci")
    assert invoke_env(kernel, {}, "status", "--check").exit_code == 1
    status = invoke_env(kernel, {"VFIO_MANAGER_EXCLUDE": first}, "status", "--check", "--json")
    assert status.exit_code == 0, "the excluded one is not the tool's to check"
    assert [d["bdf"] for d in status.json()["devices"]] == [second]
    assert invoke_env(kernel, {}, "unbind-all", "--exclude", second).exit_code == 0
    assert kernel.driver_of(second) == "vfio-pci"


def test_bdf_product_and_numa_rules_select_for_writing_commands(kernel: FakeKernel) -> None:
    first, second, third, fourth = npu_node(kernel, count=4)  # NUMA nodes 0, 1, 0, 1

    def drivers() -> list[str]:
        return [str(kernel.driver_of(b)) for b in (first, second, third, fourth)]

    result = invoke_env(kernel, {"VFIO_MANAGER_BDF": f"{second},{third}"}, "bind-all")
    assert result.exit_code == 0, result.stderr
    assert drivers() == ["rebellions", "vfio-pci", "vfio-pci", "rebellions"]
    other = invoke_env(kernel, {}, "unbind-all", "--product", "RBLN-CA25")
    assert other.exit_code == 0
    assert "No PCI function matches" in other.stdout
    assert invoke_env(kernel, {}, "unbind-all", "--numa-node", "0").exit_code == 0
    assert drivers() == ["rebellions", "vfio-pci", "rebellions", "rebellions"]
    assert invoke_env(kernel, {}, "bind-all", "--per-numa-node", "1").exit_code == 0
    assert drivers() == ["vfio-pci", "vfio-pci", "rebellions", "rebellions"]
    listed = invoke_env(
        kernel, {}, "status", "--json", "--numa-node", "1", "--product", "rbln-ca22"
    )
    assert [d["bdf"] for d in listed.json()["devices"]] == [second, fourth]


def test_a_named_function_outside_the_count_is_refused(kernel: FakeKernel) -> None:
    _first, _second, third = npu_node(kernel, count=3)  # NUMA nodes 0, 1, 0
    result = invoke_env(kernel, {"VFIO_MANAGER_PER_NUMA_NODE": "1"}, "bind", third)
    assert result.exit_code == 1
    assert "1 per NUMA node" in result.stderr
    assert kernel.writes == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VFIO_MANAGER_PRODUCT": "RBLN-CA99"}, "'RBLN-CA99' is not a product"),
        ({"VFIO_MANAGER_NUMA_NODE": "first"}, "'first' is not a NUMA node"),
        ({"VFIO_MANAGER_PER_NUMA_NODE": "two"}, "'two' is not a count"),
        ({"VFIO_MANAGER_BDF": "03:00"}, "'03:00' is not a PCI address"),
    ],
)
def test_a_bad_rule_is_a_usage_error_before_anything(
    kernel: FakeKernel, env: dict[str, str], message: str
) -> None:
    npu_node(kernel, count=1)
    for command in ("status", "bind-all", "daemon"):
        result = invoke_env(kernel, env, command)
        assert result.exit_code == 2, (command, result.stderr)
        assert message in result.stderr
    assert kernel.writes == []


def test_the_drop_in_honours_the_rules_from_its_environment(kernel: FakeKernel) -> None:
    first, second = npu_node(kernel, count=2)
    result = manage_on(kernel, "bind", "--all", VFIO_MANAGER_EXCLUDE=first)
    assert result.exit_code == 0, result.stderr
    assert (kernel.driver_of(first), kernel.driver_of(second)) == ("rebellions", "vfio-pci")
    checked = manage_on(kernel, "check_bind", "-a", VFIO_MANAGER_EXCLUDE=first)
    assert checked.lines[-1] == "All 1 Rebellions NPU devices are bound to VFIO-PCI."
    assert manage_on(kernel, "check_bind", "-a", VFIO_MANAGER_BDF=first).exit_code == 1


def test_kubevirt_config_follows_the_product_rule(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    result = invoke_env(kernel, {}, "kubevirt-config", "--product", "RBLN-CA22")
    assert result.exit_code == 0, result.stderr
    assert "1EFF:1220" in result.stdout.upper()
    none = invoke_env(kernel, {}, "kubevirt-config", "--product", "RBLN-CA25")
    assert none.exit_code == 1


@pytest.mark.parametrize(
    ("given", "said"), [("0x1200", "class 0x1200"), ("0x120000", "class 0x120000")]
)
def test_a_class_is_described_as_it_was_given(run: RunCli, given: str, said: str) -> None:
    """Four digits (base class and subclass) or six (with the interface), never padded."""
    result = run("check", "--vendor", "0x1eff", "--class", given)
    assert f"matching vendor 0x1eff, {said} (host root" in result.stdout.splitlines()[0]

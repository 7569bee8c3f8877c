"""Transcripts of ``vfio-manage``, the vfio-manage.sh drop-in, against the fake kernel.

Each test runs the drop-in as the operator or a runbook would (argv and environment in,
stdout lines and exit code out) and checks what the fake kernel saw written. The lines are
the ones the device plugin's checker loop and people's runbooks grep, so they are compared
whole. The last tests run the installed console script as a separate process against a
fake sysfs written to disk by tools/fake-sysfs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness import FakeKernel
from tests.harness.topologies import HOST_NIC, npu_node
from tests.support import state_dir
from vfio_manager.cli import compat
from vfio_manager.host import modules
from vfio_manager.host.modules import RunResult

REPO = Path(__file__).parents[2]
MISSING = "0000:7f:00.0"


@dataclass
class Transcript:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def log_events(self) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in self.stderr.splitlines() if ln.startswith("{")]


Manage = Callable[..., Transcript]


def environment(kernel: FakeKernel, **extra: str) -> dict[str, str]:
    """The variables that point the drop-in at ``kernel`` (all on the fake file system)."""
    return {
        "VFIO_MANAGER_SYSFS_ROOT": kernel.sys_root,
        "VFIO_MANAGER_DEV_ROOT": kernel.dev_root,
        "HOST_ROOT": kernel.host_root,
        "VFIO_MANAGER_STATE_DIR": state_dir(kernel),
        "VFIO_MANAGER_PROC_ROOT": kernel.proc_root,
        "VFIO_MANAGER_WRITER": "thread",
        **extra,
    }


def manage_on(kernel: FakeKernel, *argv: str, **env: str) -> Transcript:
    runner = CliRunner()
    result = runner.invoke(compat.cli, list(argv), env=environment(kernel, **env))
    return Transcript(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def manage(kernel: FakeKernel) -> Manage:
    """``manage("bind", "--all")`` against the ``kernel`` fixture."""

    def _manage(*argv: str, **env: str) -> Transcript:
        return manage_on(kernel, *argv, **env)

    return _manage


@pytest.fixture(autouse=True)
def _modprobe_is_the_fake_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """bind loads missing vfio modules: through the fake kernel, never for real."""

    def refuse(argv: object) -> RunResult:
        raise AssertionError(f"would have run {argv} for real")

    monkeypatch.setattr(modules, "subprocess_runner", refuse)


def route_modprobe(monkeypatch: pytest.MonkeyPatch, kernel: FakeKernel) -> None:
    monkeypatch.setattr(
        modules, "subprocess_runner", lambda argv: RunResult(*kernel.run_modprobe(argv))
    )


def bound_lines(bdfs: list[str]) -> list[str]:
    return [f"Device {bdf} is bound to vfio-pci" for bdf in bdfs]


# -- help and usage ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv", [("help",), ("-h",), ("--help",), (), ("bind", "--help"), ("check_bind", "-a", "-h")]
)
def test_help_prints_the_usage_on_stdout_and_exits_0(
    kernel: FakeKernel, manage: Manage, argv: tuple[str, ...]
) -> None:
    npu_node(kernel, count=1)
    result = manage(*argv)
    assert result.exit_code == 0
    assert result.lines[0] == "Usage: vfio-manage COMMAND [-a|--all] [-d|--device-id BDF]"
    for command in ("bind", "unbind", "check_bind", "cleanup", "help"):
        assert any(line.startswith(f"  {command} ") for line in result.lines), command
    assert result.stderr == ""
    assert kernel.writes == []


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (("bind", "--all", "--force"), "unknown option '--force'"),
        (("bind", "-x"), "unknown option '-x'"),
        (("frobnicate", "--all"), "unknown command 'frobnicate'"),
        (("bind",), "bind needs a target"),
        (("check_bind",), "check_bind needs a target"),
        (("bind", "-d"), "-d needs a PCI address"),
        (("unbind", "--device-id"), "--device-id needs a PCI address"),
        (("bind", "-d", "../x"), "'../x' is not a PCI address"),
        (("bind", "-d", "0000:03:00.8"), "is not a PCI address"),
        (("bind", "--all", "extra"), "unexpected argument 'extra'"),
        (("bind", "--all", "--", "extra"), "unexpected argument 'extra'"),
    ],
)
def test_a_usage_error_exits_2_and_writes_nothing(
    kernel: FakeKernel, manage: Manage, argv: tuple[str, ...], words: str
) -> None:
    npu_node(kernel, count=1)
    result = manage(*argv)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert words in result.stderr
    assert "remedy:" in result.stderr
    assert kernel.writes == []


@pytest.mark.parametrize("argv", [("-a",), ("-d", "0000:01:00.0"), ("bind",)])
def test_a_usage_error_ends_with_the_synopsis(
    kernel: FakeKernel, manage: Manage, argv: tuple[str, ...]
) -> None:
    """An option without a command is not a request for help: the script errs, and every
    usage error says how it is called."""
    npu_node(kernel, count=1)
    result = manage(*argv)
    assert result.exit_code == 2
    assert result.stdout == ""
    last = result.stderr.splitlines()[-1]
    assert (
        last == "Usage: vfio-manage COMMAND [-a|--all] [-d|--device-id BDF]; see `vfio-manage help`"
    )
    assert kernel.writes == []


def test_an_empty_root_variable_is_a_usage_error(kernel: FakeKernel, manage: Manage) -> None:
    npu_node(kernel, count=1)
    result = manage("bind", "--all", VFIO_MANAGER_SYSFS_ROOT="")
    assert result.exit_code == 2
    assert "VFIO_MANAGER_SYSFS_ROOT is set but empty" in result.stderr
    assert kernel.writes == []


def test_a_malformed_selection_variable_is_a_usage_error(
    kernel: FakeKernel, manage: Manage
) -> None:
    npu_node(kernel, count=1)
    result = manage("check_bind", "--all", VFIO_MANAGER_CLASS="0x12")
    assert result.exit_code == 2
    assert "not a PCI class" in result.stderr


# -- bind ----------------------------------------------------------------------------------------
def test_bind_all_moves_every_npu_and_prints_the_scripts_lines(
    kernel: FakeKernel, manage: Manage
) -> None:
    bdfs = npu_node(kernel, count=2)
    result = manage("bind", "--all")
    assert result.exit_code == 0, result.stderr
    assert result.lines == [
        f"unbinding device {bdfs[0]} from driver rebellions",
        f"binding device {bdfs[0]}",
        f"unbinding device {bdfs[1]} from driver rebellions",
        f"binding device {bdfs[1]}",
    ]
    for bdf in bdfs:
        assert kernel.driver_of(bdf) == "vfio-pci"
        assert kernel.override_of(bdf) == "vfio-pci"
    assert len(kernel.writes) == 3 * len(bdfs)  # the same writes as `vfio-manager bind-all`


def test_a_second_bind_writes_nothing_and_says_already_bound(
    kernel: FakeKernel, manage: Manage
) -> None:
    bdfs = npu_node(kernel, count=3)
    assert manage("bind", "-a").exit_code == 0
    kernel.clear_writes()
    again = manage("bind", "-a")
    assert again.exit_code == 0
    assert kernel.writes == []
    assert again.lines == [f"device {bdf} already bound to vfio-pci" for bdf in bdfs]


def test_bind_of_a_driverless_npu_has_no_unbinding_line(kernel: FakeKernel, manage: Manage) -> None:
    (bdf,) = npu_node(kernel, count=1, driver=None)
    result = manage("bind", "-a")
    assert result.exit_code == 0
    assert result.lines == [f"binding device {bdf}"]
    assert kernel.driver_of(bdf) == "vfio-pci"


def test_bind_device_id_moves_only_that_npu_and_wins_over_all(
    kernel: FakeKernel, manage: Manage
) -> None:
    first, second = npu_node(kernel, count=2)
    result = manage("bind", "--all", "--device-id", second[5:])  # short form, as lspci prints
    assert result.exit_code == 0
    assert result.lines == [
        f"unbinding device {second} from driver rebellions",
        f"binding device {second}",
    ]
    assert kernel.driver_of(first) == "rebellions"
    assert kernel.driver_of(second) == "vfio-pci"
    assert manage("bind", f"--device-id={first}").exit_code == 0
    assert kernel.driver_of(first) == "vfio-pci"


def test_bind_of_a_function_that_is_not_an_npu_says_so_and_succeeds(
    kernel: FakeKernel, manage: Manage
) -> None:
    npu_node(kernel, count=1)
    result = manage("bind", "-d", HOST_NIC)
    assert result.exit_code == 0
    assert result.lines == [f"device {HOST_NIC} is not a npu!"]
    assert kernel.writes == []
    assert kernel.driver_of(HOST_NIC) == "e1000e"


@pytest.mark.parametrize("command", ["bind", "unbind", "cleanup", "check_bind"])
def test_a_device_that_does_not_exist_exits_1_without_writing(
    kernel: FakeKernel, manage: Manage, command: str
) -> None:
    npu_node(kernel, count=1)
    result = manage(command, "-d", MISSING)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"no PCI function {MISSING}" in result.stderr
    assert kernel.writes == []


def test_bind_loads_the_vfio_modules_first(
    kernel: FakeKernel, manage: Manage, monkeypatch: pytest.MonkeyPatch
) -> None:
    (bdf,) = npu_node(kernel, count=1, vfio_loaded=False)
    route_modprobe(monkeypatch, kernel)
    result = manage("bind", "--all")
    assert result.exit_code == 0, result.stderr
    assert kernel.modprobe_calls == [("chroot", kernel.host_root, "/sbin/modprobe", "vfio_pci")]
    assert result.lines == [
        f"unbinding device {bdf} from driver rebellions",
        f"binding device {bdf}",
    ]
    assert kernel.driver_of(bdf) == "vfio-pci"


def test_bind_on_a_host_that_is_not_ready_exits_1_before_any_write(fs: FakeFilesystem) -> None:
    kernel = FakeKernel(fs, release="6.1.0-test", iommu=False, cmdline="ro quiet")
    try:
        npu_node(kernel, count=1)
        result = manage_on(kernel, "bind", "--all")
    finally:
        kernel.close()
    assert result.exit_code == 1  # the script's code; `vfio-manager bind-all` says 3
    assert result.stdout == ""
    assert "not ready" in result.stderr
    assert "remedy:" in result.stderr
    assert kernel.writes == []


def test_one_failing_npu_does_not_stop_the_others(kernel: FakeKernel, manage: Manage) -> None:
    first, second = npu_node(kernel, count=2)
    kernel.fail_probe("vfio-pci", first)
    result = manage("bind", "--all")
    assert result.exit_code == 1
    failed, *rest = result.lines
    assert failed.startswith(f"ERROR: device {first} was not bound to vfio-pci: ")
    assert "(restored to rebellions" in failed
    assert rest == [
        f"unbinding device {second} from driver rebellions",
        f"binding device {second}",
    ]
    assert kernel.driver_of(first) == "rebellions"  # put back where it started
    assert kernel.override_of(first) is None
    assert kernel.driver_of(second) == "vfio-pci"


def test_a_non_viable_iommu_group_is_refused(kernel: FakeKernel, manage: Manage) -> None:
    kernel.add_driver("rebellions", module="rebellions", ids=[(0x1EFF, 0x1220)])
    kernel.add_driver("e1000", module="e1000", ids=[(0x8086, 0x100E)])
    kernel.add_vfio_modules(loaded=True)
    npu, nic = "0000:05:00.0", "0000:05:00.1"
    kernel.add_function(
        npu, vendor=0x1EFF, device=0x1220, pci_class=0x120000, driver="rebellions", iommu_group=4
    )
    kernel.add_function(
        nic, vendor=0x8086, device=0x100E, pci_class=0x020000, driver="e1000", iommu_group=4
    )
    result = manage("bind", "--all")
    assert result.exit_code == 1
    (line,) = result.lines
    assert line.startswith(f"ERROR: device {npu} was not bound to vfio-pci: IOMMU group 4 is ")
    assert f"{nic} on e1000" in line
    assert kernel.writes == []
    assert kernel.driver_of(npu) == "rebellions"


def test_selection_comes_from_the_environment(kernel: FakeKernel, manage: Manage) -> None:
    bdfs = npu_node(kernel, count=2)
    other = manage("bind", "--all", VFIO_MANAGER_DEVICE_ID="0x1250,0x1251")
    assert other.exit_code == 0
    assert other.stdout == ""  # no NPU of those IDs: nothing to do, as the script
    assert kernel.writes == []
    assert manage("bind", "-d", bdfs[0], VFIO_MANAGER_DEVICE_ID="0x1250").lines == [
        f"device {bdfs[0]} is not a npu!"
    ]
    assert manage("bind", "--all", VFIO_MANAGER_DEVICE_ID=" 0x1250 ,0x1220").exit_code == 0
    assert [kernel.driver_of(bdf) for bdf in bdfs] == ["vfio-pci", "vfio-pci"]
    nic = manage("check_bind", "-a", VFIO_MANAGER_VENDOR="0x8086", VFIO_MANAGER_CLASS="0x0200")
    assert nic.lines == [f"Device {HOST_NIC} is not bound to vfio-pci"]
    assert nic.exit_code == 1


def test_logs_go_to_stderr_as_json_and_stdout_has_only_the_lines(
    kernel: FakeKernel, manage: Manage
) -> None:
    (bdf,) = npu_node(kernel, count=1)
    result = manage("bind", "--all")
    assert result.exit_code == 0
    assert not any(line.startswith("{") for line in result.lines)
    done = [e for e in result.log_events() if e.get("event") == "transition"]
    assert [(e["bdf"], e["outcome"], e["driver"]) for e in done] == [(bdf, "changed", "vfio-pci")]


# -- check_bind ----------------------------------------------------------------------------------
def test_check_bind_all_tracks_the_binding(kernel: FakeKernel, manage: Manage) -> None:
    bdfs = npu_node(kernel, count=2)
    before = manage("check_bind", "--all")
    assert before.exit_code == 1
    assert before.lines == [f"Device {bdf} is not bound to vfio-pci" for bdf in bdfs]
    assert manage("bind", "-d", bdfs[1]).exit_code == 0
    half = manage("check_bind", "--all")
    assert half.exit_code == 1
    assert half.lines == [
        f"Device {bdfs[0]} is not bound to vfio-pci",
        f"Device {bdfs[1]} is bound to vfio-pci",
    ]
    assert manage("bind", "-a").exit_code == 0
    kernel.clear_writes()
    after = manage("check_bind", "-a")
    assert after.exit_code == 0
    assert after.lines == [
        *bound_lines(bdfs),
        "All 2 Rebellions NPU devices are bound to VFIO-PCI.",
    ]
    assert kernel.writes == []  # read-only


def test_check_bind_with_no_npu_succeeds(kernel: FakeKernel, manage: Manage) -> None:
    npu_node(kernel, count=0)
    result = manage("check_bind", "--all")
    assert result.exit_code == 0
    assert result.lines == ["No Rebellions NPU devices found."]


def test_check_bind_of_one_device(kernel: FakeKernel, manage: Manage) -> None:
    first, second = npu_node(kernel, count=2)
    assert manage("bind", "-d", first).exit_code == 0
    on = manage("check_bind", "-d", first)
    assert (on.exit_code, on.lines) == (0, [f"Device {first} is bound to vfio-pci"])
    off = manage("check_bind", "--all", "-d", second)
    assert (off.exit_code, off.lines) == (1, [f"Device {second} is not bound to vfio-pci"])
    nic = manage("check_bind", "-d", HOST_NIC)
    assert (nic.exit_code, nic.lines) == (0, [f"device {HOST_NIC} is not a Rebellions NPU!"])


def test_the_operators_checker_loop_condition_holds_only_once_bound(
    kernel: FakeKernel, manage: Manage
) -> None:
    """`until /bin/vfio-manage.sh check_bind --all; do sleep 2; done`: its exit code only."""
    npu_node(kernel, count=3)
    assert manage("check_bind", "--all").exit_code != 0
    assert manage("bind", "--all").exit_code == 0
    assert manage("check_bind", "--all").exit_code == 0


# -- unbind and cleanup --------------------------------------------------------------------------
def test_unbind_all_returns_npus_to_their_native_driver(kernel: FakeKernel, manage: Manage) -> None:
    bdfs = npu_node(kernel, count=2)
    assert manage("bind", "--all").exit_code == 0
    kernel.clear_writes()
    result = manage("unbind", "--all")
    assert result.exit_code == 0, result.stderr
    assert result.lines == [
        line
        for bdf in bdfs
        for line in (
            f"unbinding device {bdf}",
            f"unbinding device {bdf} from driver vfio-pci",
            f"device {bdf} returned to driver rebellions",
        )
    ]
    for bdf in bdfs:
        assert kernel.driver_of(bdf) == "rebellions"
        assert kernel.override_of(bdf) is None
    assert len(kernel.writes) == 3 * len(bdfs)
    kernel.clear_writes()
    again = manage("unbind", "-a")
    assert again.exit_code == 0
    assert kernel.writes == []
    assert again.lines == [
        line
        for bdf in bdfs
        for line in (
            f"unbinding device {bdf}",
            f"device {bdf} is not bound to vfio-pci; left on rebellions",
        )
    ]


def test_unbind_of_one_device_and_of_a_function_that_is_not_an_npu(
    kernel: FakeKernel, manage: Manage
) -> None:
    first, second = npu_node(kernel, count=2, driver="vfio-pci")
    result = manage("unbind", "-d", first)
    assert result.exit_code == 0
    assert result.lines[0] == f"unbinding device {first}"
    assert kernel.driver_of(first) == "rebellions"
    assert kernel.driver_of(second) == "vfio-pci"
    kernel.clear_writes()
    nic = manage("unbind", "-d", HOST_NIC)
    assert (nic.exit_code, nic.stdout) == (0, "")  # the script is silent here too
    assert kernel.writes == []
    assert kernel.driver_of(HOST_NIC) == "e1000e"


def test_cleanup_rebinds_the_native_driver(kernel: FakeKernel, manage: Manage) -> None:
    bdfs = npu_node(kernel, count=2, driver="vfio-pci")
    result = manage("cleanup", "--all")
    assert result.exit_code == 0, result.stderr
    assert result.lines == [f"device {bdf} rebound to rebellions" for bdf in bdfs]
    assert [kernel.driver_of(bdf) for bdf in bdfs] == ["rebellions", "rebellions"]
    kernel.clear_writes()
    again = manage("cleanup", "--all")
    assert (again.exit_code, again.stdout) == (0, "")  # only NPUs on vfio-pci are reported
    assert kernel.writes == []


def test_cleanup_warns_about_an_npu_that_did_not_rebind_and_exits_1(
    kernel: FakeKernel, manage: Manage
) -> None:
    first, second = npu_node(kernel, count=2, driver="vfio-pci")
    kernel.fail_probe("rebellions", first)
    result = manage("cleanup", "-a")
    assert result.exit_code == 1
    warning, rest = result.lines
    assert warning.startswith(f"WARNING: device {first} did not rebind to rebellions: ")
    assert rest == f"device {second} rebound to rebellions"
    assert kernel.driver_of(first) == "vfio-pci"  # put back where it started, usable by a VM
    assert kernel.driver_of(second) == "rebellions"


def test_cleanup_of_a_device_a_vm_holds_is_refused(
    kernel: FakeKernel, manage: Manage, fs: FakeFilesystem
) -> None:
    (bdf,) = npu_node(kernel, count=1, driver="vfio-pci")
    group = kernel.group_of(bdf)
    fs.create_symlink(f"{kernel.proc_root}/4242/fd/7", f"{kernel.dev_root}/vfio/{group}")
    fs.create_file(f"{kernel.proc_root}/4242/comm", contents="qemu-kvm\n")
    fs.create_file(f"{kernel.proc_root}/4242/maps", contents="")
    kernel.clear_writes()
    result = manage("cleanup", "-d", bdf)
    assert result.exit_code == 1
    (line,) = result.lines
    assert line.startswith(f"WARNING: device {bdf} did not rebind to rebellions: ")
    assert "4242" in line
    assert kernel.writes == []
    assert kernel.driver_of(bdf) == "vfio-pci"


# -- environment ---------------------------------------------------------------------------------
def test_the_host_root_falls_back_to_the_scripts_mount_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ("HOST_ROOT", "VFIO_MANAGER_SYSFS_ROOT", "VFIO_MANAGER_STATE_DIR"):
        monkeypatch.delenv(variable, raising=False)
    mounted, _ = compat.node_and_selector(lambda path: path == "/host/lib/modules")
    assert mounted.host_root == "/host"
    bare, _ = compat.node_and_selector(lambda _path: False)
    assert (bare.host_root, bare.sysfs_root, bare.state_dir) == ("/", "/sys", "/run/vfio-manager")
    monkeypatch.setenv("HOST_ROOT", "/")
    told, _ = compat.node_and_selector(lambda _path: True)
    assert told.host_root == "/"


# -- the installed console script, as a separate process -------------------------------------------
def _installed_script() -> str:
    script = Path(sys.executable).parent / "vfio-manage"
    if not script.exists():
        pytest.fail(f"{script} is missing: reinstall the package (pip install -e .)")
    return str(script)


def test_the_installed_script_runs_help_and_check_bind_on_a_fake_sysfs(tmp_path: Path) -> None:
    root = tmp_path / "host"
    snapshot = REPO / "tests" / "fixtures" / "snapshots" / "q35-two-bound.json"
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "fake-sysfs"), str(snapshot), str(root)],
        check=True,
        capture_output=True,
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "VFIO_MANAGER_SYSFS_ROOT": str(root / "sys"),
        "VFIO_MANAGER_DEV_ROOT": str(root / "dev"),
        "HOST_ROOT": str(root),
        "VFIO_MANAGER_STATE_DIR": str(tmp_path / "state"),
        "VFIO_MANAGER_PROC_ROOT": str(root / "proc"),
    }
    script = _installed_script()

    def run(*argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [script, *argv],
            check=False,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )

    usage = run("help")
    assert usage.returncode == 0
    assert usage.stdout.startswith("Usage: vfio-manage COMMAND")
    no_npu = run("check_bind", "--all")
    assert (no_npu.returncode, no_npu.stdout) == (0, "No Rebellions NPU devices found.\n")
    nics = {"VFIO_MANAGER_VENDOR": "0x8086", "VFIO_MANAGER_CLASS": "0x020000"}
    both = run("check_bind", "--all", **nics)
    assert (both.returncode, both.stdout.splitlines()) == (
        1,
        [
            "Device 0000:00:05.0 is not bound to vfio-pci",
            "Device 0000:03:00.0 is bound to vfio-pci",
        ],
    )
    bound = run("check_bind", "-a", VFIO_MANAGER_DEVICE_ID="0x10d3", **nics)
    assert (bound.returncode, bound.stdout.splitlines()) == (
        0,
        [
            "Device 0000:03:00.0 is bound to vfio-pci",
            "All 1 Rebellions NPU devices are bound to VFIO-PCI.",
        ],
    )
    unknown = run("check_bind", "--every")
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert not (tmp_path / "state").exists()  # check_bind takes no lock and writes no journal


@pytest.mark.parametrize("command", ["check_bind", "bind", "unbind"])
def test_a_sysfs_root_without_pci_devices_is_a_failure(manage: Manage, command: str) -> None:
    result = manage(command, "--all", VFIO_MANAGER_SYSFS_ROOT="/nonexistent")
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "No Rebellions NPU devices found." not in result.stdout
    assert "/nonexistent has no bus/pci/devices" in result.stderr

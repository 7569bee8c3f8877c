"""`vfio-manager status`: read-only, calm when there is nothing, exact when there is."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from tests.daemon.ondisk import materialize
from tests.harness import FakeKernel
from tests.harness.topologies import ca25_pf, npu_node
from tests.support import RunCli, fake_process, invoke, native_node


def test_no_rebellions_function_is_said_calmly(kernel: FakeKernel, run: RunCli) -> None:
    kernel.add_driver("e1000e", module="e1000e", ids=[(0x8086, 0x10D3)])
    kernel.add_function(
        "0000:03:00.0",
        vendor=0x8086,
        device=0x10D3,
        pci_class=0x020000,
        driver="e1000e",
        iommu_group=1,
    )
    result = run("status")
    assert result.exit_code == 0
    assert "no Rebellions NPU is present" in result.stdout
    assert kernel.writes == []
    as_json = run("status", "--json")
    assert as_json.exit_code == 0
    assert as_json.json()["devices"] == []


def test_status_json_has_the_documented_fields(kernel: FakeKernel, run: RunCli) -> None:
    bdfs = npu_node(kernel, count=2)
    result = run("status", "--json")
    assert result.exit_code == 0, result.stderr
    devices = result.json()["devices"]
    assert [d["bdf"] for d in devices] == bdfs
    first = devices[0]
    assert {
        "bdf",
        "vendor",
        "device",
        "class",
        "product",
        "driver",
        "driver_override",
        "iommu_group",
        "group_viable",
        "vfio_node",
        "numa_node",
    } <= set(first)
    assert first["vendor"] == "0x1eff"
    assert first["class"] == "0x120000"
    assert first["product"] == "RBLN-CA22"
    assert first["driver"] == "rebellions"
    assert first["driver_override"] is None
    assert isinstance(first["iommu_group"], int)
    assert first["group_viable"] is True
    assert first["vfio_node"] is None


def test_status_table_lists_every_selected_function(kernel: FakeKernel, run: RunCli) -> None:
    bdfs = npu_node(kernel, count=2)
    result = run("status")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("BDF"))
    assert header.split()[:4] == ["BDF", "PRODUCT", "ID", "DRIVER"]
    for bdf in bdfs:
        assert any(line.startswith(bdf) and "rebellions" in line for line in lines)
    # nothing but the NPUs: the host NIC and disk controller are not selected
    assert len([ln for ln in lines if ln.startswith("0000:")]) == len(bdfs)


def test_status_check_reports_convergence(kernel: FakeKernel, run: RunCli) -> None:
    npu_node(kernel, count=2)
    assert run("status", "--check").exit_code == 1
    assert run("bind-all").exit_code == 0
    assert run("status", "--check").exit_code == 0


def test_status_writes_nothing_and_logs_nothing_on_stdout(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    result = invoke(kernel, "-v", "status", "--json")
    assert kernel.writes == []
    assert result.stdout.lstrip().startswith("{")


def test_status_selection_options(kernel: FakeKernel, run: RunCli) -> None:
    npu_node(kernel, count=2)
    result = run("status", "--json", "--device-id", "0x1250")
    assert result.json()["devices"] == []
    bad = run("status", "--vendor", "xyz")
    assert bad.exit_code == 2
    assert "not a valid vendor ID" in bad.stderr


def test_json_is_one_line_for_a_pipe_and_indented_for_a_terminal(
    kernel: FakeKernel, run: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipe (jq, a file) gets one compact line; a person at a terminal gets indentation.
    Both are the same document."""
    from vfio_manager.cli import render

    npu_node(kernel, count=2)
    piped = run("status", "--json")
    assert piped.stdout.count("\n") == 1, piped.stdout
    monkeypatch.setattr(render, "_stdout_is_terminal", lambda: True)
    shown = run("status", "--json")
    assert shown.stdout.count("\n") > 10
    assert json.loads(shown.stdout) == json.loads(piped.stdout)


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["status", "--check"],
        ["status", "--json"],
        ["check"],
        ["bind-all"],
        ["unbind-all", "--json"],
        ["bind-all", "--dry-run"],
    ],
)
def test_a_sysfs_root_without_pci_devices_fails_loudly(kernel: FakeKernel, argv: list[str]) -> None:
    """A typo or an unmounted hostPath is not "no NPU here": nothing was checked."""
    npu_node(kernel, count=1)
    result = invoke(kernel, "--sysfs-root", "/nonexistent", *argv)
    assert result.exit_code == 3, result.stdout + result.stderr
    assert "/nonexistent has no bus/pci/devices" in result.stderr
    assert "--sysfs-root" in result.stderr  # the remedy names the knob
    if "--json" in argv:
        assert result.json()["error"]["code"] == 3
    assert kernel.writes == []


def test_status_json_names_each_function_s_sr_iov_role(kernel: FakeKernel, run: RunCli) -> None:
    (plain,) = npu_node(kernel, count=1)
    pf = "0000:09:00.0"
    ca25_pf(kernel, pf, iommu_group=40)
    vfs = kernel.add_vfs(pf, 2, device=0x1251)
    devices = {d["bdf"]: d for d in run("status", "--json").json()["devices"]}
    assert devices[plain]["sriov"] is None
    assert devices[pf]["sriov"] == "PF with 2/4 VFs"
    assert [devices[vf]["sriov"] for vf in vfs] == [f"VF of {pf}"] * 2
    assert devices[vfs[0]]["product"] == "RBLN-CA25 VF"


def test_json_at_a_real_terminal_is_indented(tmp_path: Path) -> None:
    """`vfio-manager status --json` as a process whose stdout is a pseudo-terminal."""
    roots, _ = materialize(tmp_path / "machine", lambda k: npu_node(k, count=1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VFIO_MANAGER_")}
    argv = [sys.executable, "-m", "vfio_manager", *roots.args(tmp_path / "state")]
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [*argv, "status", "--json"], stdout=terminal, stderr=subprocess.PIPE, env=env,
            timeout=60, check=False,
        )  # fmt: skip
        os.close(terminal)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the terminal's other end is closed
            while chunk := os.read(controller, 65536):
                shown += chunk
    finally:
        os.close(controller)
    assert done.returncode == 0, done.stderr
    text = shown.decode().replace("\r\n", "\n")
    assert text.count("\n") > 10, text
    assert json.loads(text)["devices"][0]["driver"] == "rebellions"


def test_status_holders_names_who_holds_each_function(
    fs: FakeFilesystem, kernel: FakeKernel, run: RunCli
) -> None:
    """A VM holding one NPU's group, a tool holding another's native node: named on request
    (one /proc scan), never without it."""
    held, used, free = npu_node(kernel, count=3)
    assert invoke(kernel, "bind", held).exit_code == 0
    kernel.clear_writes()
    group = kernel.group_of(held)
    fake_process(fs, kernel, 4242, "qemu-system-x86", fds=(f"/dev/vfio/{group}",))
    native_node(fs, kernel, used)
    fake_process(fs, kernel, 777, "rbln-smi", fds=("/dev/rbln0",))
    as_json = run("status", "--json", "--holders")
    assert as_json.exit_code == 0, as_json.stderr
    holders = {d["bdf"]: d["holders"] for d in as_json.json()["devices"]}
    assert holders == {
        held: [
            {"pid": 4242, "command": "qemu-system-x86", "holds": f"/dev/vfio/{group}", "via": "fd"}
        ],
        used: [{"pid": 777, "command": "rbln-smi", "holds": "/dev/rbln0", "via": "fd"}],
        free: [],
    }
    text = run("status", "--holders")
    assert text.exit_code == 0
    held_lines = [line for line in text.stdout.splitlines() if line.startswith("held: ")]
    assert held_lines == [
        f"held: {held}: PID 4242 (qemu-system-x86) has /dev/vfio/{group} open",
        f"held: {used}: PID 777 (rbln-smi) has /dev/rbln0 open",
    ]
    plain = run("status", "--json")
    assert all("holders" not in d for d in plain.json()["devices"])
    assert "held: " not in run("status").stdout
    assert kernel.writes == []

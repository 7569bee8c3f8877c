"""In use and needed by the host: refusals before any write, with PIDs and reasons."""

from __future__ import annotations

import posixpath
from collections.abc import Callable

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness import FakeKernel
from tests.harness.topologies import ca25_pf, npu_node
from tests.support import HOST, VFIO, device_dir, fake_process, invoke, native_node, state


def test_unbind_refused_while_a_vm_holds_the_group(fs: FakeFilesystem, kernel: FakeKernel) -> None:
    first, second = npu_node(kernel, count=2)
    assert invoke(kernel, "bind-all").exit_code == 0
    group = kernel.group_of(first)
    fake_process(fs, kernel, 4242, "qemu-system-x86", fds=(f"/dev/vfio/{group}",))
    kernel.clear_writes()
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 1
    assert "PID 4242 (qemu-system-x86) has /dev/vfio/" in result.stdout
    assert "--force" in result.stdout
    assert state(kernel, first) == VFIO  # untouched: nothing was written for it
    assert not [w for w in kernel.writes if first in w.path or w.data.strip() == first]
    assert state(kernel, second) == HOST  # the other one carried on


def test_force_unbinds_a_held_function(fs: FakeFilesystem, kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    assert invoke(kernel, "bind-all").exit_code == 0
    fake_process(fs, kernel, 4242, "qemu-system-x86", fds=(f"/dev/vfio/{kernel.group_of(npu)}",))
    result = invoke(kernel, "unbind-all", "--force")
    assert result.exit_code == 0, result.stdout
    assert state(kernel, npu) == HOST
    assert any(e.get("outcome") == "forced" for e in result.log_events())


def test_bind_refused_while_a_process_holds_the_native_node(
    fs: FakeFilesystem, kernel: FakeKernel
) -> None:
    (npu,) = npu_node(kernel, count=1)
    native_node(fs, kernel, npu)
    fake_process(fs, kernel, 777, "rbln-smi", fds=("/dev/rbln0",))
    result = invoke(kernel, "bind-all")
    assert result.exit_code == 1
    assert "PID 777 (rbln-smi) has /dev/rbln0 open" in result.stdout
    assert kernel.writes == []


def test_bind_refused_while_a_process_maps_a_bar(fs: FakeFilesystem, kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    fs.create_file(posixpath.join(device_dir(kernel, npu), "resource0"), st_size=0)
    fake_process(fs, kernel, 31337, "dpdk-app", maps=(f"/sys/bus/pci/devices/{npu}/resource0",))
    result = invoke(kernel, "bind", npu)
    assert result.exit_code == 1
    assert "PID 31337 (dpdk-app) maps" in result.stdout
    assert kernel.writes == []


def test_a_process_holding_something_else_does_not_block(
    fs: FakeFilesystem, kernel: FakeKernel
) -> None:
    (npu,) = npu_node(kernel, count=1)
    fake_process(fs, kernel, 100, "bash", fds=("/dev/null", "/dev/vfio/vfio", "/dev/rbln9"))
    assert invoke(kernel, "bind-all").exit_code == 0
    assert state(kernel, npu) == VFIO


def test_boot_console_is_refused_unless_forced(kernel: FakeKernel) -> None:
    npu_node(kernel, count=0)
    kernel.add_function(
        "0000:09:00.0",
        vendor=0x1EFF,
        device=0x1220,
        pci_class=0x120000,
        driver="rebellions",
        iommu_group=40,
        boot_vga=True,
    )
    refused = invoke(kernel, "bind-all")
    assert refused.exit_code == 1
    assert "boot VGA device" in refused.stdout
    assert kernel.writes == []
    forced = invoke(kernel, "bind-all", "--force")
    assert forced.exit_code == 0, forced.stdout
    assert state(kernel, "0000:09:00.0") == VFIO


def test_a_boot_console_without_a_driver_is_refused_too(kernel: FakeKernel) -> None:
    """efifb or simpledrm draw the console on its BAR with no PCI driver bound to it."""
    npu_node(kernel, count=0)
    kernel.add_function(
        "0000:09:00.0", vendor=0x1EFF, device=0x1220, pci_class=0x120000, driver=None,
        iommu_group=40, boot_vga=True,
    )  # fmt: skip
    refused = invoke(kernel, "bind", "0000:09:00.0")
    assert refused.exit_code == 1, refused.stdout
    assert "boot VGA device" in refused.stdout
    assert kernel.writes == []


def test_pf_with_vfs_is_refused_with_advice(kernel: FakeKernel) -> None:
    npu_node(kernel, count=0)
    ca25_pf(kernel, "0000:09:00.0", iommu_group=40)
    vfs = kernel.add_vfs("0000:09:00.0", 2, device=0x1251)
    result = invoke(kernel, "bind", "0000:09:00.0")
    assert result.exit_code == 1
    assert "SR-IOV PF with 2 VFs enabled" in result.stdout
    assert "bind its VFs instead" in result.stdout
    assert kernel.writes == []
    vf_bind = invoke(kernel, "bind-all", "--device-id", "0x1251")
    assert vf_bind.exit_code == 0, vf_bind.stdout
    assert [kernel.driver_of(vf) for vf in vfs] == ["vfio-pci", "vfio-pci"]


# -- a group is handed over whole: the mates of a refused member stay where they are ----------
def test_the_mates_of_a_held_function_do_not_move_to_vfio(
    fs: FakeFilesystem, kernel: FakeKernel
) -> None:
    held, mate = npu_node(kernel, count=2, shared_group=True)
    native_node(fs, kernel, held)
    fake_process(fs, kernel, 777, "rbln-smi", fds=("/dev/rbln0",))
    result = invoke(kernel, "bind-all", "--json")
    assert result.exit_code == 1
    report = {f["bdf"]: f for f in result.json()["functions"]}
    assert "PID 777 (rbln-smi) has /dev/rbln0 open" in report[held]["reason"]
    assert report[mate]["outcome"] == "refused"
    assert f"member {held} is refused" in report[mate]["reason"]
    assert kernel.writes == []


def test_the_mates_of_a_host_critical_function_do_not_move_to_vfio(kernel: FakeKernel) -> None:
    npu_node(kernel, count=0)
    for bdf, console in (("0000:09:00.0", True), ("0000:09:00.1", False)):
        kernel.add_function(
            bdf, vendor=0x1EFF, device=0x1220, pci_class=0x120000, driver="rebellions",
            iommu_group=40, boot_vga=console,
        )  # fmt: skip
    result = invoke(kernel, "bind-all", "--json")
    assert result.exit_code == 1
    report = {f["bdf"]: f for f in result.json()["functions"]}
    assert "boot VGA device" in report["0000:09:00.0"]["reason"]
    assert "member 0000:09:00.0 is refused" in report["0000:09:00.1"]["reason"]
    assert kernel.writes == []


def test_the_mates_of_a_held_function_stay_on_vfio(fs: FakeFilesystem, kernel: FakeKernel) -> None:
    """A process maps one member's BAR: the other members stay with it on vfio-pci, and the
    report says why (a host driver's probe would find the group still owned by its user)."""
    held, mate = npu_node(kernel, count=2, driver="vfio-pci", shared_group=True)
    fs.create_file(posixpath.join(device_dir(kernel, held), "resource0"), st_size=0)
    fake_process(fs, kernel, 31337, "dpdk-app", maps=(f"/sys/bus/pci/devices/{held}/resource0",))
    result = invoke(kernel, "unbind-all", "--json")
    assert result.exit_code == 1
    report = {f["bdf"]: f for f in result.json()["functions"]}
    assert "PID 31337 (dpdk-app) maps" in report[held]["reason"]
    assert report[mate]["outcome"] == "refused"
    assert f"member {held} is refused" in report[mate]["reason"]
    assert state(kernel, mate) == VFIO
    assert kernel.writes == []
    forced = invoke(kernel, "unbind-all", "--force")
    assert forced.exit_code == 0, forced.stdout
    assert state(kernel, held) == state(kernel, mate) == HOST


# -- a VFIO device fd kept after its group fd was closed (kernel-facts K26) --------------------
def _device_fd_holder(fs: FakeFilesystem, kernel: FakeKernel, syspath: str = "") -> None:
    """PID 4242 keeps only a VFIO device fd (fd 3); its fdinfo names ``syspath`` (6.18+)."""
    fake_process(fs, kernel, 4242, "dpdk-app", fds=("anon_inode:[vfio-device]",))
    named = f"vfio-device-syspath: {syspath}\n" if syspath else ""
    fs.create_file(f"{kernel.proc_root}/4242/fdinfo/3", contents=f"pos:\t0\n{named}")


def test_unbind_refused_while_a_process_keeps_only_the_device_fd_it_names(
    fs: FakeFilesystem, kernel: FakeKernel
) -> None:
    held, free = npu_node(kernel, count=2, driver="vfio-pci")
    syspath = "/sys/" + posixpath.relpath(device_dir(kernel, held), kernel.sys_root)
    _device_fd_holder(fs, kernel, syspath)
    result = invoke(kernel, "unbind-all", "--json")
    assert result.exit_code == 1
    report = {f["bdf"]: f for f in result.json()["functions"]}
    assert f"PID 4242 (dpdk-app) has the VFIO device of {held} open" in report[held]["reason"]
    assert state(kernel, held) == VFIO
    assert state(kernel, free) == HOST


def test_unbind_refused_while_a_process_keeps_an_unnamed_device_fd(
    fs: FakeFilesystem, kernel: FakeKernel
) -> None:
    """Before Linux 6.18 the fd does not say which device: every function on vfio that a
    user has open is held by it; the others are not."""
    held, free = npu_node(kernel, count=2, driver="vfio-pci")
    kernel.open_vfio_device(held)
    _device_fd_holder(fs, kernel)
    result = invoke(kernel, "unbind-all", "--json")
    assert result.exit_code == 1
    report = {f["bdf"]: f for f in result.json()["functions"]}
    assert "PID 4242 (dpdk-app) has a VFIO device fd" in report[held]["reason"]
    assert state(kernel, held) == VFIO
    assert state(kernel, free) == HOST


def test_a_mapped_bar_is_not_taken_for_an_unnamed_device_fd(
    fs: FakeFilesystem, kernel: FakeKernel
) -> None:
    """A process that maps one function's BAR holds that function only, not every function
    on vfio that is enabled."""
    mapped, enabled = npu_node(kernel, count=2, driver="vfio-pci")
    kernel.open_vfio_device(enabled)
    fs.create_file(posixpath.join(device_dir(kernel, mapped), "resource0"), st_size=0)
    fake_process(fs, kernel, 31337, "dpdk-app", maps=(f"/sys/bus/pci/devices/{mapped}/resource0",))
    result = invoke(kernel, "unbind-all", "--json")
    assert result.exit_code == 1
    report = {f["bdf"]: f for f in result.json()["functions"]}
    assert "PID 31337 (dpdk-app) maps" in report[mapped]["reason"]
    assert "VFIO device fd" not in report[mapped]["reason"]
    assert report[enabled]["outcome"] == "changed", report[enabled]
    assert state(kernel, enabled) == HOST


# -- a dry run answers as the real run would: a refusal exits 1 --------------------------------
def _held(fs: FakeFilesystem, kernel: FakeKernel) -> list[str]:
    (npu,) = npu_node(kernel, count=1)
    native_node(fs, kernel, npu)
    fake_process(fs, kernel, 777, "rbln-smi", fds=("/dev/rbln0",))
    return ["bind", npu]


def _host_critical(fs: FakeFilesystem, kernel: FakeKernel) -> list[str]:
    npu_node(kernel, count=0)
    kernel.add_function(
        "0000:09:00.0", vendor=0x1EFF, device=0x1220, pci_class=0x120000, driver="rebellions",
        iommu_group=40, boot_vga=True,
    )  # fmt: skip
    return ["bind-all"]


def _not_viable(fs: FakeFilesystem, kernel: FakeKernel) -> list[str]:
    npu_node(kernel, count=0)
    ca25_pf(kernel, "0000:09:00.0", iommu_group=40)
    kernel.add_vfs("0000:09:00.0", 2, device=0x1251)
    return ["bind", "0000:09:00.0"]


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (_held, "PID 777 (rbln-smi) has /dev/rbln0 open"),
        (_host_critical, "boot VGA device"),
        (_not_viable, "SR-IOV PF with 2 VFs enabled"),
    ],
    ids=["held", "host-critical", "not-viable"],
)
def test_a_dry_run_with_a_refusal_exits_1_like_the_real_run(
    fs: FakeFilesystem,
    kernel: FakeKernel,
    setup: Callable[[FakeFilesystem, FakeKernel], list[str]],
    reason: str,
) -> None:
    """Scripts run ``--dry-run`` as a check before a maintenance window."""
    command = setup(fs, kernel)
    dry = invoke(kernel, *command, "--dry-run")
    assert dry.exit_code == 1, dry.stdout
    assert reason in dry.stdout
    as_json = invoke(kernel, *command, "--dry-run", "--json")
    assert as_json.exit_code == 1
    assert as_json.json()["dry_run"] is True
    assert kernel.writes == []
    assert invoke(kernel, *command).exit_code == 1  # what the dry run foretold

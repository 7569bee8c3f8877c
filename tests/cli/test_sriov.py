"""VF provisioning through the CLI on the fake kernel: ``--vfs`` gives a selected SR-IOV PF N
VFs on vfio-pci (the PF stays on its driver), ``unbind`` gives them back and restores the PF's
``sriov_numvfs`` and autoprobe; a held VF refuses a numvfs change."""

from __future__ import annotations

import errno
import json
import os
from typing import Any

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness import FakeKernel
from tests.harness.topologies import ca25_pf, npu_node
from tests.support import RunCli, fake_process, state_dir
from vfio_manager.safety import holders

PF = "0000:04:00.0"
IGB = ("--vendor", "0x8086", "--class", "0x0200", "--device-id", "0x10c9")


def _igb_node(kernel: FakeKernel, *, totalvfs: int = 7) -> None:
    """The QEMU guest's igb (82576): a PF on igb whose VFs igbvf drives, each in its group."""
    npu_node(kernel, count=0)
    kernel.add_driver("igb", module="igb", ids=[(0x8086, 0x10C9)])
    kernel.add_driver("igbvf", module="igbvf", ids=[(0x8086, 0x10CA)])
    kernel.add_function(
        PF,
        vendor=0x8086,
        device=0x10C9,
        pci_class=0x020000,
        driver="igb",
        iommu_group=11,
        sriov_totalvfs=totalvfs,
        sriov_vf_device=0x10CA,
    )


def _sriov(kernel: FakeKernel, name: str) -> str:
    fd = os.open(f"{kernel.sys_root}/bus/pci/devices/{PF}/{name}", os.O_RDONLY)
    try:
        return os.read(fd, 64).decode().strip()
    finally:
        os.close(fd)


def _vfs(kernel: FakeKernel) -> list[str]:
    return sorted(b for b in kernel.functions() if kernel.function(b).physfn == PF)


def _record(kernel: FakeKernel) -> str:
    return os.path.join(state_dir(kernel), f"sriov-{PF}.json")


def test_bind_all_creates_the_vfs_on_vfio_and_keeps_the_pf(kernel: FakeKernel, run: RunCli) -> None:
    _igb_node(kernel)
    result = run("bind-all", *IGB, "--vfs", "2")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert kernel.driver_of(PF) == "igb"
    assert (_sriov(kernel, "sriov_drivers_autoprobe"), _sriov(kernel, "sriov_numvfs")) == ("0", "2")
    vfs = _vfs(kernel)
    assert len(vfs) == 2
    assert all(kernel.driver_of(vf) == "vfio-pci" for vf in vfs)
    assert {str(kernel.group_of(vf)) for vf in vfs} <= kernel.vfio_devs()
    pf_writes = [w.path for w in kernel.writes if PF in w.path]
    assert pf_writes == [
        f"bus/pci/devices/{PF}/sriov_drivers_autoprobe",
        f"bus/pci/devices/{PF}/sriov_numvfs",
    ]
    assert len(kernel.writes) == 2 + 2 * 2  # the PF's two, then override and probe per VF
    with open(_record(kernel)) as f:
        origin = json.load(f)
    assert (origin["original_numvfs"], origin["original_autoprobe"]) == (0, 1)
    assert (origin["record"], origin["original_driver"]) == ("sriov", "igb")
    # the report: the PF first, changed, then its VFs
    assert [line.split()[0] for line in result.stdout.splitlines()[1:4]] == [PF, *vfs]


def test_a_second_run_writes_nothing(kernel: FakeKernel, run: RunCli) -> None:
    _igb_node(kernel)
    assert run("bind-all", *IGB, "--vfs", "2").exit_code == 0
    kernel.clear_writes()
    again = run("bind-all", *IGB, "--vfs", "2", "--json")
    assert again.exit_code == 0, again.stdout + again.stderr
    assert kernel.writes == []
    assert {f["outcome"] for f in again.json()["functions"]} == {"converged"}
    assert len(again.json()["functions"]) == 3


def test_unbind_all_returns_the_vfs_and_restores_the_pf(kernel: FakeKernel, run: RunCli) -> None:
    _igb_node(kernel)
    assert run("bind-all", *IGB, "--vfs", "2").exit_code == 0
    vfs = _vfs(kernel)
    kernel.clear_writes()
    back = run("unbind-all", *IGB, "--json")  # no --vfs: the journal knows what was ours
    assert back.exit_code == 0, back.stdout + back.stderr
    doc = back.json()
    assert [f["bdf"] for f in doc["functions"]] == [*vfs, PF]
    assert _vfs(kernel) == []
    assert (_sriov(kernel, "sriov_drivers_autoprobe"), _sriov(kernel, "sriov_numvfs")) == ("1", "0")
    assert kernel.driver_of(PF) == "igb"
    assert not os.path.exists(_record(kernel))
    assert [w.path.rsplit("/", 1)[1] for w in kernel.writes if PF in w.path] == [
        "sriov_numvfs",
        "sriov_drivers_autoprobe",
    ]
    kernel.clear_writes()
    assert run("unbind-all", *IGB).exit_code == 0
    assert kernel.writes == []


def test_a_count_change_is_refused_while_a_vf_is_held(
    fs: FakeFilesystem, kernel: FakeKernel, run: RunCli
) -> None:
    _igb_node(kernel)
    assert run("bind-all", *IGB, "--vfs", "2").exit_code == 0
    held = _vfs(kernel)[0]
    fake_process(fs, kernel, 4242, "qemu-system-x86", fds=(f"/dev/vfio/{kernel.group_of(held)}",))
    kernel.clear_writes()
    result = run("bind-all", *IGB, "--vfs", "3", "--json")
    assert result.exit_code == 1, result.stdout
    (pf,) = [f for f in result.json()["functions"] if f["bdf"] == PF]
    assert pf["outcome"] == "refused"
    assert "would remove VFs in use" in pf["reason"]
    assert "qemu-system-x86" in pf["reason"]
    assert "shut it down" in pf["remedy"]
    assert kernel.writes == []
    assert _sriov(kernel, "sriov_numvfs") == "2"
    # back to the host: the held VF is refused, so is its PF's restore; the other VF returns
    back = run("unbind-all", *IGB, "--json")
    assert back.exit_code == 1
    outcomes = {f["bdf"]: f["outcome"] for f in back.json()["functions"]}
    assert outcomes[held] == "refused"
    assert outcomes[PF] == "refused"
    assert _sriov(kernel, "sriov_numvfs") == "2"
    assert os.path.exists(_record(kernel))


def test_a_count_change_of_our_vfs_goes_through_zero(kernel: FakeKernel, run: RunCli) -> None:
    _igb_node(kernel)
    assert run("bind-all", *IGB, "--vfs", "2").exit_code == 0
    kernel.clear_writes()
    result = run("bind-all", *IGB, "--vfs", "3")
    assert result.exit_code == 0, result.stdout + result.stderr
    numvfs = [w.data for w in kernel.writes if w.path.endswith("sriov_numvfs")]
    assert numvfs == ["0\n", "3\n"]  # the kernel wants 0 before another count (EBUSY)
    assert [kernel.driver_of(vf) for vf in _vfs(kernel)] == ["vfio-pci"] * 3
    assert run("unbind-all", *IGB).exit_code == 0
    assert _sriov(kernel, "sriov_numvfs") == "0"  # the count it was found with


def test_vfs_it_did_not_create_are_left_as_found(kernel: FakeKernel, run: RunCli) -> None:
    _igb_node(kernel)
    vfs = kernel.add_vfs(PF, 2, driver="igbvf")
    kernel.clear_writes()
    other = run("bind-all", *IGB, "--vfs", "3")
    assert other.exit_code == 1
    assert "did not create" in other.stdout
    assert "left as found" in other.stdout
    assert kernel.writes == []
    assert [kernel.driver_of(vf) for vf in vfs] == ["igbvf", "igbvf"]
    same = run("bind-all", *IGB, "--vfs", "2")  # the count it has: its VFs are bound
    assert same.exit_code == 0, same.stdout + same.stderr
    assert [kernel.driver_of(vf) for vf in vfs] == ["vfio-pci", "vfio-pci"]
    assert not any(w.path.endswith(("sriov_numvfs", "autoprobe")) for w in kernel.writes)
    assert run("unbind-all", *IGB).exit_code == 0
    assert [kernel.driver_of(vf) for vf in vfs] == ["igbvf", "igbvf"]
    assert _sriov(kernel, "sriov_numvfs") == "2"


def test_more_vfs_than_the_pf_carries_are_refused(kernel: FakeKernel, run: RunCli) -> None:
    _igb_node(kernel)
    result = run("bind-all", *IGB, "--vfs", "8")
    assert result.exit_code == 1
    assert "carries at most 7" in result.stdout
    assert kernel.writes == []


def test_without_vfs_the_pf_with_vfs_is_still_refused(kernel: FakeKernel, run: RunCli) -> None:
    _igb_node(kernel)
    kernel.add_vfs(PF, 2, driver="igbvf")
    result = run("bind-all", *IGB)
    assert result.exit_code == 1
    assert "SR-IOV PF with 2 VFs" in result.stdout


def test_dry_run_shows_the_pf_writes_and_writes_nothing(kernel: FakeKernel, run: RunCli) -> None:
    _igb_node(kernel)
    result = run("bind-all", *IGB, "--vfs", "2", "--dry-run")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "write 0 to sriov_drivers_autoprobe" in result.stdout
    assert "write 2 to sriov_numvfs" in result.stdout
    assert kernel.writes == []
    assert not os.path.exists(_record(kernel))


def test_pfs_with_held_vfs_are_each_refused_naming_their_own_holder_from_one_scan(
    fs: FakeFilesystem, kernel: FakeKernel, run: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    npu_node(kernel, count=0)
    pfs = [ca25_pf(kernel, "0000:41:00.0", iommu_group=30)]
    pfs.append(ca25_pf(kernel, "0000:42:00.0", iommu_group=31))
    assert run("bind-all", "--vfs", "2").exit_code == 0
    for pid, pf in zip((4242, 4343), pfs):
        (vf, _) = sorted(b for b in kernel.functions() if kernel.function(b).physfn == pf)
        fake_process(fs, kernel, pid, f"vm-{pid}", fds=(f"/dev/vfio/{kernel.group_of(vf)}",))
    scanned: list[list[str]] = []
    scan = holders.find_holders

    def counted(sysfs: Any, proc_root: str, functions: list[Any]) -> Any:
        scanned.append([f.bdf for f in functions])
        return scan(sysfs, proc_root, functions)

    monkeypatch.setattr("vfio_manager.pipeline.transition.find_holders", counted)
    kernel.clear_writes()
    result = run("bind-all", "--vfs", "3", "--json")
    assert result.exit_code == 1, result.stdout
    reasons = {f["bdf"]: f["reason"] for f in result.json()["functions"] if f["bdf"] in pfs}
    assert "vm-4242" in reasons[pfs[0]]
    assert "vm-4343" not in reasons[pfs[0]]
    assert "vm-4343" in reasons[pfs[1]]
    assert "vm-4242" not in reasons[pfs[1]]
    assert kernel.writes == []
    assert len([bdfs for bdfs in scanned if bdfs]) == 1  # the four VFs of both PFs at once


def test_per_product_counts_pick_the_pfs_product(kernel: FakeKernel, run: RunCli) -> None:
    (npu,) = npu_node(kernel, count=1)
    ca25_pf(kernel, "0000:41:00.0", iommu_group=30)
    result = run("bind-all", "--vfs", "RBLN-CA25=3", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    vfs = sorted(b for b in kernel.functions() if kernel.function(b).physfn == "0000:41:00.0")
    assert len(vfs) == 3
    assert kernel.driver_of("0000:41:00.0") == "rebellions"
    assert kernel.driver_of(npu) == "vfio-pci"  # a PF of another product is bound itself
    status = run("status", "--vfs", "RBLN-CA25=3", "--json").json()["devices"]
    by_bdf = {d["bdf"]: d for d in status}
    assert by_bdf["0000:41:00.0"]["vfs"] == vfs
    assert by_bdf["0000:41:00.0"]["sriov_numvfs"] == 3
    assert {by_bdf[vf]["physfn"] for vf in vfs} == {"0000:41:00.0"}
    text = run("status", "--vfs", "RBLN-CA25=3").stdout
    assert f"sriov: 0000:41:00.0 carries 3 VF(s): {', '.join(vfs)}" in text


def test_kubevirt_config_names_the_vfs_device_id_before_they_exist(
    kernel: FakeKernel, run: RunCli
) -> None:
    npu_node(kernel, count=0)
    ca25_pf(kernel, "0000:41:00.0", iommu_group=30)
    plain = run("kubevirt-config", "--naming", "pf", "--format", "json")
    assert "1EFF:1251" not in plain.stdout
    result = run("kubevirt-config", "--naming", "pf", "--format", "json", "--vfs", "2")
    assert result.exit_code == 0, result.stderr
    entries = json.loads(result.stdout)["permittedHostDevices"]["pciHostDevices"]
    assert {e["pciVendorSelector"]: e["resourceName"] for e in entries} == {
        "1EFF:1250": "rebellions.ai/RBLN-CA25_PF",
        "1EFF:1251": "rebellions.ai/RBLN-CA25_VF",
    }


def test_bad_vfs_values_are_usage_errors(kernel: FakeKernel, run: RunCli) -> None:
    _igb_node(kernel)
    for bad in ("0", "x", "RBLN-XX=2", "RBLN-CA25=", "RBLN-CA25-VF=2"):
        result = run("bind-all", *IGB, "--vfs", bad)
        assert result.exit_code == 2, bad
    assert kernel.writes == []


def test_status_names_a_pfs_vfs_without_selecting_them(kernel: FakeKernel, run: RunCli) -> None:
    _igb_node(kernel)
    vfs = kernel.add_vfs(PF, 2, driver="igbvf")
    devices = run("status", *IGB, "--json").json()["devices"]
    assert [(d["bdf"], d["sriov_numvfs"], d["vfs"]) for d in devices] == [(PF, 2, vfs)]
    assert f"sriov: {PF} carries 2 VF(s): {', '.join(vfs)}" in run("status", *IGB).stdout


def test_an_excluded_vf_is_left_alone(kernel: FakeKernel, run: RunCli) -> None:
    _igb_node(kernel)
    first = "0000:04:00.1"  # the fake PF's first VF (offset 1, stride 1)
    result = run("bind-all", *IGB, "--vfs", "2", "--exclude", first)
    assert result.exit_code == 0, result.stdout + result.stderr
    vfs = _vfs(kernel)
    assert first in vfs, vfs
    assert [kernel.driver_of(vf) for vf in vfs if vf != first] == ["vfio-pci"]
    assert kernel.driver_of(first) is None
    assert first not in result.stdout


def test_unbind_dry_run_shows_the_restore_after_the_vfs(kernel: FakeKernel, run: RunCli) -> None:
    _igb_node(kernel)
    assert run("bind-all", *IGB, "--vfs", "2").exit_code == 0
    kernel.clear_writes()
    result = run("unbind-all", *IGB, "--dry-run")
    assert result.exit_code == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    pf_at = next(i for i, line in enumerate(lines) if line.startswith(PF))
    assert lines[pf_at + 1 : pf_at + 3] == [
        "  1. write 0 to sriov_numvfs",
        "  2. write 1 to sriov_drivers_autoprobe",
    ]
    assert all(not line.startswith(PF) for line in lines[:pf_at])
    assert kernel.writes == []


def test_a_held_vf_keeps_its_pfs_record_even_with_nothing_to_restore(
    fs: FakeFilesystem, kernel: FakeKernel, run: RunCli
) -> None:
    _igb_node(kernel)
    vfs = kernel.add_vfs(PF, 2, driver="igbvf")  # the admin's: restoring them writes nothing
    assert run("bind-all", *IGB, "--vfs", "2").exit_code == 0
    fake_process(fs, kernel, 4242, "qemu-system-x86", fds=(f"/dev/vfio/{kernel.group_of(vfs[0])}",))
    back = run("unbind-all", *IGB, "--json")
    assert back.exit_code == 1
    outcomes = {f["bdf"]: f["outcome"] for f in back.json()["functions"]}
    assert outcomes == {vfs[0]: "refused", vfs[1]: "changed", PF: "refused"}
    assert os.path.exists(_record(kernel)), "kept: its VF is still on vfio-pci"
    fs.remove_object(f"{kernel.proc_root}/4242")
    assert run("unbind-all", *IGB).exit_code == 0
    assert [kernel.driver_of(vf) for vf in vfs] == ["igbvf", "igbvf"]
    assert not os.path.exists(_record(kernel))


def test_a_failed_numvfs_write_is_reported_and_unbind_restores_autoprobe(
    kernel: FakeKernel, run: RunCli
) -> None:
    _igb_node(kernel)
    kernel.fail_next_write(f"bus/pci/devices/{PF}/sriov_numvfs", errno.ENOMEM)
    result = run("bind-all", *IGB, "--vfs", "2", "--json")
    assert result.exit_code == 1
    (pf,) = result.json()["functions"]
    assert (pf["bdf"], pf["outcome"], pf["errno"]) == (PF, "failed", "ENOMEM")
    assert pf["step"] == "sriov-numvfs"
    assert _vfs(kernel) == []
    assert _sriov(kernel, "sriov_drivers_autoprobe") == "0"
    assert os.path.exists(_record(kernel)), "the origin stays: autoprobe is not as found"
    assert run("unbind-all", *IGB).exit_code == 0
    assert _sriov(kernel, "sriov_drivers_autoprobe") == "1"
    assert not os.path.exists(_record(kernel))


def test_naming_the_pf_moves_its_vfs_and_naming_a_vf_only_that_vf(
    kernel: FakeKernel, run: RunCli
) -> None:
    _igb_node(kernel)
    assert run("bind", PF, *IGB, "--vfs", "2").exit_code == 0
    first, second = _vfs(kernel)
    assert [kernel.driver_of(vf) for vf in (first, second)] == ["vfio-pci"] * 2
    one = run("unbind", first, *IGB, "--vfs", "2")
    assert one.exit_code == 0, one.stdout + one.stderr
    assert (kernel.driver_of(first), kernel.driver_of(second)) == (None, "vfio-pci")
    assert _sriov(kernel, "sriov_numvfs") == "2"
    assert run("unbind", PF, *IGB).exit_code == 0
    assert _vfs(kernel) == []
    assert _sriov(kernel, "sriov_drivers_autoprobe") == "1"


def test_a_pf_that_stopped_responding_gets_no_vfs_and_keeps_what_it_had(
    kernel: FakeKernel, run: RunCli
) -> None:
    """Neither a numvfs write nor an SR-IOV record for a PF that reads all-ones (K27)."""
    _igb_node(kernel)
    assert run("bind-all", *IGB, "--vfs", "2").exit_code == 0
    kernel.stop_responding(PF)
    kernel.clear_writes()
    for command in (["bind-all", *IGB, "--vfs", "3"], ["unbind-all", *IGB]):
        result = run(*command, "--json")
        assert result.exit_code == 1, result.stdout + result.stderr
        refused = {f["bdf"]: f for f in result.json()["functions"]}[PF]
        assert "not responding" in refused["reason"], refused
        assert not [w.path for w in kernel.writes if PF in w.path], command
    assert _sriov(kernel, "sriov_numvfs") == "2"
    assert os.path.exists(_record(kernel)), "the PF's origin stays for when it answers again"


def test_status_lists_the_vfs_the_pf_links_whatever_its_numvfs_file_says(
    kernel: FakeKernel, run: RunCli
) -> None:
    """An odd ``sriov_numvfs`` (garbage, huge, or behind the links) neither hides a VF nor
    makes ``status`` walk numbers that are not there."""
    _igb_node(kernel)
    assert run("bind-all", *IGB, "--vfs", "2").exit_code == 0
    numvfs: Any = kernel.fs.resolve(kernel.sys_path(f"bus/pci/devices/{PF}/sriov_numvfs"))
    for shown in (b"1\n", b"4294967295\n", b"two\n"):
        numvfs._show = lambda shown=shown: shown  # the harness has no call for garbage
        result = run("status", *IGB, "--json")
        assert result.exit_code == 0, result.stdout + result.stderr
        (pf,) = [d for d in result.json()["devices"] if d["bdf"] == PF]
        assert pf["vfs"] == _vfs(kernel), shown

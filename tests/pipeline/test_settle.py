"""Settling journal records goes through the one write pipeline: refused, shown, counted like
any write. The fake kernel plays the node; a fake /proc process plays the VM.
"""

from __future__ import annotations

import errno
import os
from typing import Optional

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness import FakeKernel
from tests.harness.topologies import HOST_NIC, npu_node
from tests.support import (
    HOST,
    VFIO,
    Killed,
    fake_process,
    invoke,
    named_bdf,
    pending,
    plant_record,
    state,
    state_dir,
)
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.safety.journal import Journal


def writes_for(kernel: FakeKernel, bdf: str) -> list[str]:
    return [w.path for w in kernel.writes if named_bdf(w.path, w.data) == bdf]


def bind_with_late_nodes(kernel: FakeKernel, count: int = 2) -> list[str]:
    """bind-all whose /dev/vfio/N appear after --timeout: failed, on vfio-pci, record kept."""
    bdfs = npu_node(kernel, count=count)
    kernel.defer_vfio_nodes()
    late = invoke(kernel, "--timeout", "0.2", "bind-all")
    assert late.exit_code == 1
    assert all(state(kernel, bdf) == VFIO for bdf in bdfs)
    assert pending(kernel) == bdfs
    kernel.defer_vfio_nodes(False)  # the nodes appear now; later ones at once
    return bdfs


def test_unbind_all_refuses_a_kept_record_whose_group_a_vm_holds(
    fs: FakeFilesystem, kernel: FakeKernel
) -> None:
    held, free = bind_with_late_nodes(kernel)
    fake_process(fs, kernel, 4242, "qemu-system-x86", fds=(f"/dev/vfio/{kernel.group_of(held)}",))
    kernel.clear_writes()
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 1
    assert writes_for(kernel, held) == []  # nothing yanked from the VM
    assert state(kernel, held) == VFIO
    assert "PID 4242 (qemu-system-x86)" in result.stdout
    assert state(kernel, free) == HOST
    assert pending(kernel) == [held]  # the held one's record stays for the next run
    assert "0 write(s)" not in result.stdout


def test_binding_another_function_finishes_a_kept_record_without_writing_to_it(
    fs: FakeFilesystem, kernel: FakeKernel
) -> None:
    held, other = bind_with_late_nodes(kernel)
    fake_process(fs, kernel, 4242, "qemu-system-x86", fds=(f"/dev/vfio/{kernel.group_of(held)}",))
    assert invoke(kernel, "unbind", other).exit_code == 1  # held is refused, other returns
    kernel.clear_writes()
    result = invoke(kernel, "bind", other)
    assert writes_for(kernel, held) == []
    assert state(kernel, held) == VFIO
    assert state(kernel, other) == VFIO
    assert result.exit_code == 0, result.stdout
    assert f"{held}" in result.stdout
    assert "finishing the interrupted bind" in result.stdout
    assert pending(kernel) == []


def test_a_record_for_an_unselected_host_nic_is_refused_not_rolled_back(
    kernel: FakeKernel,
) -> None:
    npu_node(kernel, count=1)
    path = plant_record(
        kernel, HOST_NIC, vendor_device="8086:10d3", original_driver=None, direction="vfio"
    )
    kernel.clear_writes()
    result = invoke(kernel, "unbind-all")
    assert writes_for(kernel, HOST_NIC) == []
    assert kernel.driver_of(HOST_NIC) == "e1000e"
    assert result.exit_code == 1
    assert HOST_NIC in result.stdout
    assert "outside the selection" in result.stdout
    assert os.path.exists(path)  # kept for a human


def test_a_record_written_for_another_device_is_dropped_not_applied(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1, driver="vfio-pci")
    plant_record(
        kernel,
        npu,
        vendor_device="1af4:1000",
        original_driver="virtio-pci",
        original_override="vfio-pci",
    )
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 0, result.stdout
    assert "written for 1af4:1000" in result.stdout
    assert "virtio-pci" not in " ".join(w.path for w in kernel.writes)
    assert state(kernel, npu) == HOST  # planned from modules.alias, like any function
    assert pending(kernel) == []


def test_a_record_naming_an_unregistered_driver_is_refused_and_kept(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1, driver="vfio-pci")
    path = plant_record(kernel, npu, vendor_device="1eff:1220", original_driver="no-such-driver")
    kernel.clear_writes()
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 1
    assert "'no-such-driver' is not a registered PCI driver" in result.stdout
    assert kernel.writes == []
    assert os.path.exists(path)


def test_a_record_naming_dot_dot_as_driver_is_quarantined(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1, driver="vfio-pci")
    plant_record(kernel, npu, vendor_device="1eff:1220", original_driver="..")
    result = invoke(kernel, "unbind-all")
    assert "unreadable" in result.stdout
    assert "not a driver name" in result.stdout
    assert "drivers/../" not in " ".join(w.path for w in kernel.writes)
    assert state(kernel, npu) == HOST


def test_a_killed_bind_whose_finishing_probe_fails_goes_back_to_its_recorded_driver(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    (npu,) = npu_node(kernel, count=1)
    real_write = Sysfs.write
    seen = [0]

    def killed_before_probe(
        self: Sysfs, path: str, data: str, *, subject: Optional[str] = None
    ) -> None:
        if path.endswith("drivers_probe"):
            raise Killed
        seen[0] += 1
        real_write(self, path, data, subject=subject)

    monkeypatch.setattr(Sysfs, "write", killed_before_probe)
    with pytest.raises(Killed):
        invoke(kernel, "bind-all")
    monkeypatch.setattr(Sysfs, "write", real_write)
    assert state(kernel, npu) == (None, "vfio-pci")  # driverless, override set
    kernel.fail_probe("vfio-pci", npu, errno.EINVAL)
    result = invoke(kernel, "bind-all")
    assert result.exit_code == 1
    assert state(kernel, npu) == HOST, result.stdout
    assert pending(kernel) == []
    origin = Journal(state_dir(kernel)).original(npu)  # as found, and as it is again
    assert origin is not None
    assert (origin.original_driver, origin.original_override) == HOST


def test_a_failed_roll_back_keeps_the_record_and_exits_1(kernel: FakeKernel) -> None:
    first, second = npu_node(kernel, count=2, driver="vfio-pci")
    plant_record(
        kernel,
        first,
        vendor_device="1eff:1220",
        original_driver="rebellions",
        original_override=None,
        direction="vfio",
        origin_created=True,
    )
    kernel.fail_probe("rebellions", first, errno.EIO)
    result = invoke(kernel, "unbind", second)
    assert result.exit_code == 1, result.stdout
    assert "rolling back the interrupted bind" in result.stdout
    assert "journal record is kept" in result.stdout
    assert state(kernel, second) == HOST
    assert pending(kernel) == [first]


def test_rolling_back_an_interrupted_bind_is_a_return_refused_while_a_vm_holds_it(
    fs: FakeFilesystem, kernel: FakeKernel
) -> None:
    """The roll-back of a bind moves the function to the host: it is refused like an unbind
    while a VM holds its group, and planned as a return."""
    first, second = npu_node(kernel, count=2, driver="vfio-pci")
    plant_record(
        kernel,
        first,
        vendor_device="1eff:1220",
        original_driver="rebellions",
        original_override=None,
        direction="vfio",
    )
    fake_process(fs, kernel, 4242, "qemu-system-x86", fds=(f"/dev/vfio/{kernel.group_of(first)}",))
    dry = invoke(kernel, "unbind", second, "--dry-run", "--json").json()
    (planned,) = [e for e in dry["functions"] if e["bdf"] == first]
    assert planned["direction"] == "host"
    kernel.clear_writes()
    result = invoke(kernel, "unbind", second)
    assert result.exit_code == 1, result.stdout
    assert "PID 4242 (qemu-system-x86)" in result.stdout
    assert writes_for(kernel, first) == []
    assert state(kernel, first) == VFIO
    assert state(kernel, second) == HOST
    assert pending(kernel) == [first]


def test_dry_run_shows_the_journal_writes_the_real_run_makes(kernel: FakeKernel) -> None:
    first, second = npu_node(kernel, count=2, driver="vfio-pci")
    plant_record(
        kernel,
        first,
        vendor_device="1eff:1220",
        original_driver="rebellions",
        original_override=None,
        direction="vfio",
    )
    dry = invoke(kernel, "--log-format", "json", "unbind", second, "--dry-run", "--json")
    planned = dry.json()
    assert planned["writes"] == 6, planned  # 3 for the named one, 3 to roll the other back
    assert pending(kernel) == [first]  # a dry run changes nothing, the journal included
    kernel.clear_writes()
    real = invoke(kernel, "unbind", second, "--json")
    assert real.exit_code == 0, real.stdout
    report = real.json()
    assert report["writes"] == len(kernel.writes) == 6
    assert {f["bdf"] for f in report["functions"]} == {first, second}
    assert pending(kernel) == []

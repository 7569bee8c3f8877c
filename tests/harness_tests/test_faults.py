"""Fault injection: failing writes, a blocked unbind, hot-unplug, failing probes, late nodes."""

from __future__ import annotations

import errno
import threading

from tests.harness import FakeKernel, Write
from tests.harness.topologies import npu_node
from tests.harness_tests._io import dev, drv, read, write, write_errno

TIMEOUT = 5.0  # seconds a test waits on an event before declaring a hang


def test_fail_next_write_fails_once_without_effect(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    kernel.fail_next_write(drv("rebellions", "unbind"), errno.EBUSY)
    assert write_errno(kernel, drv("rebellions", "unbind"), npu) == errno.EBUSY
    assert kernel.driver_of(npu) == "rebellions"
    assert write_errno(kernel, drv("rebellions", "unbind"), npu) is None  # only the next one
    assert kernel.driver_of(npu) is None
    assert kernel.writes == [
        Write(drv("rebellions", "unbind"), npu, errno.EBUSY),
        Write(drv("rebellions", "unbind"), npu, None),
    ]


def test_fail_next_write_on_an_attribute_keeps_its_value(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    path = dev(npu, "driver_override")
    kernel.fail_next_write(path, errno.ENOMEM)
    kernel.fail_next_write(f"{kernel.sys_root}/{path}", errno.EIO)  # absolute paths work too
    assert write_errno(kernel, path, "vfio-pci\n") == errno.ENOMEM
    assert write_errno(kernel, path, "vfio-pci\n") == errno.EIO
    assert read(kernel, path) == "(null)\n"
    assert write_errno(kernel, path, "vfio-pci\n") is None
    assert kernel.override_of(npu) == "vfio-pci"


def test_fail_next_write_accepts_the_real_path(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    real = f"devices/pci0000:00/0000:00:02.0/{npu}/driver_override"
    kernel.fail_next_write(real, errno.EACCES)
    assert write_errno(kernel, dev(npu, "driver_override"), "vfio-pci\n") == errno.EACCES


def test_block_unbind_blocks_the_writer_until_released(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1, driver="vfio-pci")
    group = str(kernel.group_of(npu))
    gate = kernel.block_unbind(npu)
    outcome: list[int | None] = []
    writer = threading.Thread(
        target=lambda: outcome.append(write_errno(kernel, drv("vfio-pci", "unbind"), npu)),
        daemon=True,
    )
    writer.start()
    assert gate.entered.wait(TIMEOUT), "the unbind never reached the kernel"
    writer.join(0.05)
    assert writer.is_alive()  # still inside os.write
    # as on the real kernel (QEMU tier): the driver link goes before remove() blocks, while
    # vfio-pci still owns the function: its group node and vfio-dev entry stay
    assert kernel.driver_of(npu) is None
    assert group in kernel.vfio_devs()
    assert kernel.fs.exists(f"{kernel.sys_root}/bus/pci/devices/{npu}/vfio-dev")
    assert outcome == []
    gate.set()
    writer.join(TIMEOUT)
    assert not writer.is_alive()
    assert outcome == [None]
    assert kernel.driver_of(npu) is None
    assert group not in kernel.vfio_devs()


def test_block_unbind_waits_only_for_a_valid_unbind_of_that_function(kernel: FakeKernel) -> None:
    first, second = npu_node(kernel, count=2)
    gate = kernel.block_unbind(first)
    assert write_errno(kernel, drv("rebellions", "unbind"), second) is None  # not blocked
    assert write_errno(kernel, drv("vfio-pci", "unbind"), first) == errno.ENODEV  # not blocked
    assert not gate.entered.is_set()


def test_close_releases_blocked_unbinds(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    gate = kernel.block_unbind(npu)
    writer = threading.Thread(
        target=lambda: write(kernel, drv("rebellions", "unbind"), npu), daemon=True
    )
    writer.start()
    assert gate.entered.wait(TIMEOUT)
    kernel.close()  # what the fixture does at teardown
    writer.join(TIMEOUT)
    assert not writer.is_alive()


def test_remove_function_on_write_unplugs_after_the_write(kernel: FakeKernel) -> None:
    first, second = npu_node(kernel, count=2)
    group = kernel.group_of(first)
    kernel.remove_function_on_write(dev(first, "driver_override"), first)
    write(kernel, dev(first, "driver_override"), "vfio-pci\n")  # the write itself succeeds
    assert kernel.writes[-1] == Write(dev(first, "driver_override"), "vfio-pci\n", None)
    assert not kernel.has_function(first)
    assert not kernel.fs.exists(f"{kernel.sys_root}/bus/pci/devices/{first}", check_link=True)
    assert not kernel.fs.exists(f"{kernel.sys_root}/kernel/iommu_groups/{group}")
    assert not kernel.fs.exists(
        f"{kernel.sys_root}/bus/pci/drivers/rebellions/{first}", check_link=True
    )
    assert write_errno(kernel, drv("rebellions", "unbind"), first) == errno.ENODEV
    assert write_errno(kernel, "bus/pci/drivers_probe", first) == errno.ENODEV
    assert kernel.driver_of(first) is None
    assert kernel.driver_of(second) == "rebellions"


def test_remove_function_takes_children_and_vfio_node(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1, driver="vfio-pci")
    port = "0000:00:02.0"
    kernel.remove_function(port)  # the root port and everything behind it
    assert not kernel.has_function(npu)
    assert kernel.vfio_devs() == {"vfio"}
    assert sorted(kernel.fs.listdir(f"{kernel.sys_root}/bus/pci/drivers/vfio-pci")) == [
        "bind",
        "module",
        "new_id",
        "remove_id",
        "uevent",
        "unbind",
    ]


def test_remove_attribute_unplugs(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    write(kernel, dev(npu, "remove"), "1")
    assert not kernel.has_function(npu)


def test_fail_probe_makes_native_rebind_fail(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1, driver="vfio-pci")
    kernel.fail_probe("rebellions", npu, errno.EIO)
    write(kernel, dev(npu, "driver_override"), "\n")
    write(kernel, drv("vfio-pci", "unbind"), npu)
    write(kernel, "bus/pci/drivers_probe", npu)
    assert kernel.driver_of(npu) is None
    assert write_errno(kernel, drv("rebellions", "bind"), npu) == errno.EIO
    kernel.fail_probe("rebellions", npu, None)
    write(kernel, drv("rebellions", "bind"), npu)
    assert kernel.driver_of(npu) == "rebellions"


def test_deferred_vfio_nodes_appear_at_settle(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    kernel.defer_vfio_nodes()
    write(kernel, dev(npu, "driver_override"), "vfio-pci\n")
    write(kernel, drv("rebellions", "unbind"), npu)
    write(kernel, "bus/pci/drivers_probe", npu)
    assert kernel.driver_of(npu) == "vfio-pci"
    assert kernel.vfio_devs() == {"vfio"}  # udev has not caught up yet
    kernel.settle()
    assert kernel.vfio_devs() == {"vfio", str(kernel.group_of(npu))}


def test_unplugging_one_vf_keeps_the_other_links(kernel: FakeKernel) -> None:
    npu_node(kernel, count=0)
    pf = "0000:10:00.0"
    kernel.add_function(
        pf,
        vendor=0x1EFF,
        device=0x1220,
        pci_class=0x120000,
        iommu_group=40,
        driver="rebellions",
        sriov_totalvfs=2,
    )
    first, second = kernel.add_vfs(pf, 2)
    assert kernel.group_of(first) == 4  # the lowest free group number, as the kernel's IDA
    kernel.remove_function(first)
    base = f"{kernel.sys_root}/bus/pci/devices/{pf}"
    assert read(kernel, dev(pf, "sriov_numvfs")) == "1\n"
    assert [n for n in sorted(kernel.fs.listdir(base)) if n.startswith("virtfn")] == ["virtfn1"]
    kernel.remove_function(second)
    assert [n for n in kernel.fs.listdir(base) if n.startswith("virtfn")] == []

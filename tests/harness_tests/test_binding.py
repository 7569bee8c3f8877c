"""bind / unbind / drivers_probe / new_id and friends: errnos and effects (docs/kernel-facts.md)."""

from __future__ import annotations

import errno

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness import FakeKernel, ModuleInUseError, UnknownModuleError, Write
from tests.harness.topologies import ca25_pf, npu_node
from tests.harness_tests._io import add_simple, dev, drv, read, write, write_errno


def _to_vfio(k: FakeKernel, bdf: str, native: str | None) -> None:
    """The safe order: override first, unbind, drivers_probe."""
    write(k, dev(bdf, "driver_override"), "vfio-pci\n")
    if native is not None:
        write(k, drv(native, "unbind"), bdf)
    write(k, "bus/pci/drivers_probe", bdf)


def _to_host(k: FakeKernel, bdf: str) -> None:
    write(k, dev(bdf, "driver_override"), "\n")
    write(k, drv("vfio-pci", "unbind"), bdf)
    write(k, "bus/pci/drivers_probe", bdf)


# -- the safe order -----------------------------------------------------------------------------
def test_safe_order_moves_npu_to_vfio_and_back(kernel: FakeKernel) -> None:
    first, second = npu_node(kernel, count=2)
    group = kernel.group_of(first)
    _to_vfio(kernel, first, "rebellions")
    assert kernel.driver_of(first) == "vfio-pci"
    assert kernel.override_of(first) == "vfio-pci"
    assert kernel.vfio_devs() == {"vfio", str(group)}
    assert kernel.driver_of(second) == "rebellions"  # untouched
    assert kernel.writes == [
        Write(dev(first, "driver_override"), "vfio-pci\n", None),
        Write(drv("rebellions", "unbind"), first, None),
        Write("bus/pci/drivers_probe", first, None),
    ]
    assert read(kernel, dev(first, "uevent")).startswith("DRIVER=vfio-pci\n")
    _to_host(kernel, first)
    assert kernel.driver_of(first) == "rebellions"
    assert kernel.override_of(first) is None
    assert kernel.vfio_devs() == {"vfio"}


def test_return_to_host_leaves_device_unbound_when_native_module_is_absent(
    kernel: FakeKernel,
) -> None:
    (npu,) = npu_node(kernel, count=1)
    _to_vfio(kernel, npu, "rebellions")
    kernel.unload_module("rebellions")
    _to_host(kernel, npu)
    assert kernel.driver_of(npu) is None
    assert kernel.override_of(npu) is None


def test_unbind_without_override_lets_drivers_probe_give_it_back(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    write(kernel, drv("rebellions", "unbind"), npu)
    write(kernel, "bus/pci/drivers_probe", npu)
    assert kernel.driver_of(npu) == "rebellions"  # the trap the override closes


# -- drivers_probe -------------------------------------------------------------------------------
def test_drivers_probe_on_bound_device_does_nothing(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    write(kernel, dev(npu, "driver_override"), "vfio-pci\n")
    write(kernel, "bus/pci/drivers_probe", npu)
    assert kernel.driver_of(npu) == "rebellions"
    assert kernel.writes[-1].error is None


def test_drivers_probe_unknown_device_is_enodev(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    assert write_errno(kernel, "bus/pci/drivers_probe", "0000:7f:00.0") == errno.ENODEV
    assert write_errno(kernel, "bus/pci/drivers_probe", "nonsense") == errno.ENODEV


def test_drivers_probe_hides_vfio_refusals(kernel: FakeKernel) -> None:
    bridge_port = "0000:00:02.0"
    (npu,) = npu_node(kernel, count=1)
    kernel.add_function(
        "0000:10:00.0",
        vendor=0x1EFF,
        device=0x1220,
        pci_class=0x120000,
        driver="rebellions",
        iommu_group=40,
        sriov_totalvfs=4,
    )
    kernel.add_vfs("0000:10:00.0", 2)
    for bdf, native in ((bridge_port, "pcieport"), ("0000:10:00.0", "rebellions")):
        write(kernel, dev(bdf, "driver_override"), "vfio-pci\n")
        write(kernel, drv(native, "unbind"), bdf)
        assert write_errno(kernel, "bus/pci/drivers_probe", bdf) is None  # "success"
        assert kernel.driver_of(bdf) is None  # ... and driverless
    assert kernel.vfio_devs() == {"vfio"}
    assert any("failed with error -22" in line and bridge_port in line for line in kernel.dmesg)
    assert any("failed with error -16" in line for line in kernel.dmesg)
    assert kernel.driver_of(npu) == "rebellions"


def test_vfio_refusals_come_back_from_bind(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    kernel.add_function(
        "0000:10:00.0",
        vendor=0x1EFF,
        device=0x1220,
        pci_class=0x120000,
        iommu_group=40,
        sriov_totalvfs=4,
        driver_override="vfio-pci",
    )
    vfs = kernel.add_vfs("0000:10:00.0", 2)
    assert vfs == ["0000:10:00.1", "0000:10:00.2"]
    assert read(kernel, dev("0000:10:00.0", "sriov_numvfs")) == "2\n"
    assert write_errno(kernel, drv("vfio-pci", "bind"), "0000:10:00.0") == errno.EBUSY
    write(kernel, dev("0000:00:02.0", "driver_override"), "vfio-pci\n")
    write(kernel, drv("pcieport", "unbind"), "0000:00:02.0")
    assert write_errno(kernel, drv("vfio-pci", "bind"), "0000:00:02.0") == errno.EINVAL
    # a VF in its own group is fine
    write(kernel, dev(vfs[0], "driver_override"), "vfio-pci\n")
    write(kernel, drv("vfio-pci", "bind"), vfs[0])
    assert kernel.driver_of(vfs[0]) == "vfio-pci"


def test_iommu_off_vfio_refuses_every_probe(fs: FakeFilesystem) -> None:
    k = FakeKernel(fs, iommu=False)
    nic, edu = add_simple(k)
    for bdf in (nic, edu):
        write(k, dev(bdf, "driver_override"), "vfio-pci\n")
    write(k, drv("e1000e", "unbind"), nic)
    assert write_errno(k, drv("vfio-pci", "bind"), nic) == errno.EINVAL
    assert write_errno(k, "bus/pci/drivers_probe", edu) is None
    assert k.driver_of(nic) is None
    assert k.driver_of(edu) is None
    assert k.vfio_devs() == {"vfio"}
    assert k.dmesg == [
        f"vfio-pci {b}: probe with driver vfio-pci failed with error -22" for b in (nic, edu)
    ]


# -- unbind and bind errnos ----------------------------------------------------------------------
def test_unbind_errnos(kernel: FakeKernel) -> None:
    nic, edu = add_simple(kernel)
    assert write_errno(kernel, drv("vfio-pci", "unbind"), nic) == errno.ENODEV  # other driver
    assert write_errno(kernel, drv("e1000e", "unbind"), edu) == errno.ENODEV  # unbound
    assert write_errno(kernel, drv("e1000e", "unbind"), "0000:7f:00.0") == errno.ENODEV
    assert kernel.driver_of(nic) == "e1000e"
    assert write_errno(kernel, drv("e1000e", "unbind"), nic + "\n") is None  # one \n is fine
    assert kernel.driver_of(nic) is None
    assert not kernel.fs.exists(f"{kernel.sys_root}/bus/pci/drivers/e1000e/{nic}", check_link=True)


def test_bind_errnos(kernel: FakeKernel) -> None:
    nic, edu = add_simple(kernel)
    assert write_errno(kernel, drv("e1000e", "bind"), "0000:7f:00.0") == errno.ENODEV
    assert write_errno(kernel, drv("e1000e", "bind"), nic) == errno.EBUSY  # already bound
    assert write_errno(kernel, drv("e1000e", "bind"), edu) == errno.ENODEV  # not in its table
    write(kernel, dev(nic, "driver_override"), "vfio-pci\n")
    # matches now (override) but still bound: EBUSY comes after the match check
    assert write_errno(kernel, drv("vfio-pci", "bind"), nic) == errno.EBUSY
    # an override naming another driver: ENODEV even though it is e1000e's own device
    assert write_errno(kernel, drv("e1000e", "bind"), nic) == errno.ENODEV
    write(kernel, drv("e1000e", "unbind"), nic)
    write(kernel, drv("vfio-pci", "bind"), nic)
    assert kernel.driver_of(nic) == "vfio-pci"
    assert [w.error for w in kernel.writes if w.path.endswith("/bind")] == [
        errno.ENODEV,
        errno.EBUSY,
        errno.ENODEV,
        errno.EBUSY,
        errno.ENODEV,
        None,
    ]


# -- /dev/vfio/N ---------------------------------------------------------------------------------
def test_group_node_appears_with_first_member_and_goes_with_last(kernel: FakeKernel) -> None:
    kernel.add_driver("rebellions", module="rebellions", ids=[(0x1EFF, 0x1220), (0x1EFF, 0x1221)])
    kernel.add_driver("vfio-pci", module="vfio_pci", vfio=True)
    pair = ("0000:05:00.0", "0000:05:00.1")
    for bdf, device in zip(pair, (0x1220, 0x1221)):
        kernel.add_function(
            bdf,
            vendor=0x1EFF,
            device=device,
            pci_class=0x120000,
            driver="rebellions",
            iommu_group=4,
        )
    assert kernel.vfio_devs() == {"vfio"}
    _to_vfio(kernel, pair[0], "rebellions")
    assert kernel.vfio_devs() == {"vfio", "4"}
    _to_vfio(kernel, pair[1], "rebellions")
    assert sorted(kernel.fs.listdir(f"{kernel.sys_root}/bus/pci/drivers/vfio-pci")) == [
        *pair,
        "bind",
        "module",
        "new_id",
        "remove_id",
        "uevent",
        "unbind",
    ]
    assert [kernel.fs.listdir(f"{kernel.sys_root}/bus/pci/devices/{b}/vfio-dev") for b in pair] == [
        ["vfio0"],
        ["vfio1"],
    ]
    _to_host(kernel, pair[0])
    assert kernel.vfio_devs() == {"vfio", "4"}  # 05:00.1 still holds the group
    assert not kernel.fs.exists(f"{kernel.sys_root}/bus/pci/devices/{pair[0]}/vfio-dev")
    _to_host(kernel, pair[1])
    assert kernel.vfio_devs() == {"vfio"}


def test_vfio_index_reuses_the_lowest_free_number(kernel: FakeKernel) -> None:
    a, b, c = npu_node(kernel, count=3, driver="vfio-pci")
    write(kernel, drv("vfio-pci", "unbind"), a)
    write(kernel, drv("vfio-pci", "bind"), a)
    assert kernel.fs.listdir(f"{kernel.sys_root}/bus/pci/devices/{a}/vfio-dev") == ["vfio0"]
    assert kernel.fs.listdir(f"{kernel.sys_root}/bus/pci/devices/{c}/vfio-dev") == ["vfio2"]
    assert kernel.driver_of(b) == "vfio-pci"


# -- new_id / remove_id / drivers_autoprobe --------------------------------------------------------
def test_new_id_binds_unbound_matches_and_is_eexist_the_second_time(kernel: FakeKernel) -> None:
    nic, edu = add_simple(kernel)
    write(kernel, drv("vfio-pci", "new_id"), "1234 11e8")
    assert kernel.driver_of(edu) == "vfio-pci"  # dynamic IDs match without an override
    assert kernel.driver_of(nic) == "e1000e"
    assert write_errno(kernel, drv("vfio-pci", "new_id"), "1234 11e8") == errno.EEXIST
    assert write_errno(kernel, drv("e1000e", "new_id"), "8086 10d3") == errno.EEXIST  # static
    assert write_errno(kernel, drv("vfio-pci", "new_id"), "1234") == errno.EINVAL
    assert write_errno(kernel, drv("vfio-pci", "remove_id"), "1234 11e8") is None
    assert write_errno(kernel, drv("vfio-pci", "remove_id"), "1234 11e8") == errno.ENODEV
    assert kernel.driver_of(edu) == "vfio-pci"  # remove_id does not unbind


def test_drivers_autoprobe_controls_module_load_probing(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1, vfio_loaded=False)
    write(kernel, dev(npu, "driver_override"), "vfio-pci\n")
    write(kernel, drv("rebellions", "unbind"), npu)
    write(kernel, "bus/pci/drivers_autoprobe", "0")
    assert read(kernel, "bus/pci/drivers_autoprobe") == "0\n"
    kernel.load_module("vfio_pci")
    assert kernel.driver_of(npu) is None
    write(kernel, "bus/pci/drivers_probe", npu)  # drivers_probe works regardless
    assert kernel.driver_of(npu) == "vfio-pci"


# -- modules -----------------------------------------------------------------------------------
def test_load_module_registers_driver_and_binds_waiting_overrides(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1, vfio_loaded=False)
    assert "vfio-pci" not in kernel.drivers()
    assert kernel.vfio_devs() == set()
    assert not kernel.fs.exists(f"{kernel.dev_root}/vfio")
    write(kernel, dev(npu, "driver_override"), "vfio-pci\n")
    write(kernel, drv("rebellions", "unbind"), npu)
    write(kernel, "bus/pci/drivers_probe", npu)
    assert kernel.driver_of(npu) is None  # vfio-pci not registered yet
    kernel.load_module("vfio-pci")
    assert kernel.driver_of(npu) == "vfio-pci"  # driver_register probes it
    assert kernel.vfio_devs() == {"vfio", str(kernel.group_of(npu))}
    assert kernel.loaded_modules()[:6] == [
        "vfio_pci",
        "vfio_pci_core",
        "irqbypass",
        "vfio_virqfd",
        "vfio_iommu_type1",
        "vfio",
    ]


def test_unload_module_unbinds_and_refuses_when_in_use(kernel: FakeKernel) -> None:
    bdfs = npu_node(kernel, count=2, driver="vfio-pci")
    with pytest.raises(ModuleInUseError):
        kernel.unload_module("vfio")
    kernel.unload_module("vfio_pci")
    assert [kernel.driver_of(b) for b in bdfs] == [None, None]
    assert kernel.vfio_devs() == {"vfio"}
    assert not kernel.fs.exists(f"{kernel.sys_root}/bus/pci/drivers/vfio-pci")
    assert not kernel.fs.exists(f"{kernel.sys_root}/module/vfio_pci")
    with pytest.raises(UnknownModuleError):
        kernel.unload_module("vfio_pci")
    assert kernel.run_modprobe(["modprobe", "-r", "vfio_pci_core"]) == (0, "", "")


def test_sriov_numvfs_writes(kernel: FakeKernel) -> None:
    npu_node(kernel, count=0)
    pf = "0000:10:00.0"
    ca25_pf(kernel, pf, iommu_group=40)
    assert read(kernel, dev(pf, "sriov_totalvfs")) == "4\n"
    assert read(kernel, dev(pf, "sriov_vf_device")) == "1251\n"
    assert write_errno(kernel, dev(pf, "sriov_numvfs"), "5") == errno.ERANGE
    assert write_errno(kernel, dev(pf, "sriov_numvfs"), "two") == errno.EINVAL
    write(kernel, dev(pf, "sriov_numvfs"), "2\n")
    vfs = ["0000:10:00.1", "0000:10:00.2"]
    assert [kernel.driver_of(v) for v in vfs] == ["rebellions", "rebellions"]  # autoprobed
    assert kernel.fs.readlink(f"{kernel.sys_root}/devices/pci0000:10/{vfs[0]}/physfn") == (
        f"../{pf}"
    )
    assert kernel.fs.readlink(f"{kernel.sys_root}/devices/pci0000:10/{pf}/virtfn1") == (
        f"../{vfs[1]}"
    )
    assert len({kernel.group_of(v) for v in [pf, *vfs]}) == 3
    assert write_errno(kernel, dev(pf, "sriov_numvfs"), "3") == errno.EBUSY
    write(kernel, dev(pf, "sriov_numvfs"), "0")
    assert not any(kernel.has_function(v) for v in vfs)
    write(kernel, drv("rebellions", "unbind"), pf)
    assert write_errno(kernel, dev(pf, "sriov_numvfs"), "1") == errno.ENOENT  # no PF driver


def test_noiommu_mode_binds_without_isolation(fs: FakeFilesystem) -> None:
    k = FakeKernel(fs, iommu=False)
    nic, edu = add_simple(k)
    k.enable_noiommu()
    assert read(k, "module/vfio/parameters/enable_unsafe_noiommu_mode") == "Y\n"
    write(k, dev(edu, "driver_override"), "vfio-pci\n")
    write(k, "bus/pci/drivers_probe", edu)
    assert k.driver_of(edu) == "vfio-pci"
    group = k.group_of(edu)
    assert group is not None
    assert k.vfio_devs() == {"vfio", f"noiommu-{group}"}
    assert k.fs.listdir(f"{k.sys_root}/kernel/iommu_groups") == [str(group)]
    write(k, drv("vfio-pci", "unbind"), edu)
    assert k.group_of(edu) is None
    assert k.vfio_devs() == {"vfio"}
    assert k.fs.listdir(f"{k.sys_root}/kernel/iommu_groups") == []
    assert k.driver_of(nic) == "e1000e"


def test_group_viability_is_not_enforced_at_bind(kernel: FakeKernel) -> None:
    """The kernel binds one member of a group while a sibling stays on a host driver; only
    opening the group fails ("not viable"). Which drivers leave DMA to their user is not in
    sysfs: the harness records it as ``dma_safe`` for the tests' own reference."""
    kernel.add_driver("e1000", module="e1000", ids=[(0x8086, 0x100E)])
    kernel.add_driver("vfio-pci", module="vfio_pci", vfio=True, dma_safe=True)
    kernel.add_driver("pci-stub", module="pci_stub", builtin=True, dma_safe=True)
    kernel.add_driver("pcieport", classes=[(0x060400, 0xFFFF00)], dma_safe=True)
    kernel.add_function(
        "0000:00:05.0",
        vendor=0x8086,
        device=0x100E,
        pci_class=0x020000,
        driver="e1000",
        iommu_group=4,
    )
    kernel.add_function(
        "0000:00:05.1",
        vendor=0x1AF4,
        device=0x1000,
        pci_class=0x020000,
        iommu_group=4,
        driver_override="vfio-pci",
    )
    write(kernel, "bus/pci/drivers_probe", "0000:00:05.1")
    assert kernel.driver_of("0000:00:05.1") == "vfio-pci"
    assert kernel.driver_of("0000:00:05.0") == "e1000"
    assert kernel.vfio_devs() == {"vfio", "4"}
    assert [kernel.driver(d).dma_safe for d in ("vfio-pci", "pci-stub", "pcieport", "e1000")] == [
        True,
        True,
        True,
        False,
    ]


def test_failed_bind_half_way_and_the_restore(fs: FakeFilesystem) -> None:
    """Known trap: override set, unbound, vfio-pci refuses -> driverless with a stale
    override. Clearing the override and reprobing puts the device back."""
    k = FakeKernel(fs, iommu=False)
    nic, _ = add_simple(k)
    write(k, dev(nic, "driver_override"), "vfio-pci\n")
    write(k, drv("e1000e", "unbind"), nic)
    assert write_errno(k, drv("vfio-pci", "bind"), nic) == errno.EINVAL
    assert (k.driver_of(nic), k.override_of(nic)) == (None, "vfio-pci")
    write(k, dev(nic, "driver_override"), "\n")
    write(k, "bus/pci/drivers_probe", nic)
    assert (k.driver_of(nic), k.override_of(nic)) == ("e1000e", None)

"""npu_node: the machine most product tests start from."""

from __future__ import annotations

import pytest

from tests.harness import FakeKernel
from tests.harness.topologies import (
    DISK_ROOT_PORT,
    HOST_BRIDGE,
    HOST_DISK,
    HOST_NIC,
    REBELLIONS_PF_IDS,
    REBELLIONS_VF_IDS,
    npu_node,
)
from tests.harness_tests._io import dev, drv, read, write


def test_default_node(kernel: FakeKernel) -> None:
    bdfs = npu_node(kernel)
    assert bdfs == ["0000:01:00.0", "0000:02:00.0"]
    for bdf in bdfs:
        assert read(kernel, dev(bdf, "vendor")) == "0x1eff\n"
        assert read(kernel, dev(bdf, "class")) == "0x120000\n"
        assert read(kernel, dev(bdf, "device")) == "0x1220\n"
        assert kernel.driver_of(bdf) == "rebellions"
        assert kernel.override_of(bdf) is None
        group = kernel.group_of(bdf)
        assert group is not None
        assert kernel.group_members(group) == [bdf]  # alone in its group
    assert kernel.driver_of(HOST_NIC) == "e1000e"
    assert kernel.driver_of(HOST_DISK) == "nvme"
    assert kernel.driver_of(DISK_ROOT_PORT) == "pcieport"
    assert kernel.driver_of(HOST_BRIDGE) is None
    groups = [kernel.group_of(b) for b in kernel.functions()]
    assert len(groups) == len(set(groups))  # every function in its own group
    assert kernel.vfio_devs() == {"vfio"}
    assert "vfio-pci" in kernel.drivers()
    assert not kernel.has_function("0000:7f:00.0")


def test_rebellions_driver_knows_every_pf_and_vf_id(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    ids = kernel.driver("rebellions").ids
    assert {d for _, d in ids} == set(REBELLIONS_PF_IDS) | set(REBELLIONS_VF_IDS)
    assert len(REBELLIONS_PF_IDS) == 9
    assert len(REBELLIONS_VF_IDS) == 8


def test_moving_npus_leaves_the_host_functions_alone(kernel: FakeKernel) -> None:
    bdfs = npu_node(kernel, count=3)
    for bdf in bdfs:
        write(kernel, dev(bdf, "driver_override"), "vfio-pci\n")
        write(kernel, drv("rebellions", "unbind"), bdf)
        write(kernel, "bus/pci/drivers_probe", bdf)
    assert [kernel.driver_of(b) for b in bdfs] == ["vfio-pci"] * 3
    assert kernel.vfio_devs() == {"vfio", *(str(kernel.group_of(b)) for b in bdfs)}
    for host in (HOST_NIC, HOST_DISK, DISK_ROOT_PORT, HOST_BRIDGE):
        assert kernel.override_of(host) is None
        assert not any(host in w.path or w.data == host for w in kernel.writes)


def test_variants(kernel: FakeKernel) -> None:
    bdfs = npu_node(kernel, count=2, device=0x1250, driver="vfio-pci", shared_group=True)
    assert read(kernel, dev(bdfs[0], "device")) == "0x1250\n"
    assert [kernel.driver_of(b) for b in bdfs] == ["vfio-pci", "vfio-pci"]
    assert [kernel.override_of(b) for b in bdfs] == ["vfio-pci", "vfio-pci"]
    (group,) = {kernel.group_of(b) for b in bdfs}
    assert group is not None
    assert kernel.group_members(group) == bdfs
    assert kernel.vfio_devs() == {"vfio", str(group)}


def test_unbound_and_without_vfio(kernel: FakeKernel) -> None:
    bdfs = npu_node(kernel, count=1, driver=None, vfio_loaded=False)
    assert kernel.driver_of(bdfs[0]) is None
    assert "vfio-pci" not in kernel.drivers()
    assert kernel.vfio_devs() == set()
    kernel.load_module("vfio_pci")  # the modules are on disk
    assert "vfio-pci" in kernel.drivers()
    with pytest.raises(ValueError, match="vfio_loaded"):
        npu_node(kernel, count=1, driver="vfio-pci", vfio_loaded=False)


def test_many_npus_spill_onto_a_second_root_bus(kernel: FakeKernel) -> None:
    bdfs = npu_node(kernel, count=24)
    assert len(set(bdfs)) == 24
    assert kernel.function(bdfs[-1]).parent == "0000:80:02.0"

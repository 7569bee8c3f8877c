"""Real machines' sysfs layouts (../shared/snapshots) driven through the CLI.

QEMU cannot emulate vendor 0x1eff, so these select the e1000e (8086:10d3, class 0x020000) as
the stand-in NPU with a native driver and QEMU's edu device (1234:11e8) as one with none.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.harness import FakeKernel
from tests.support import invoke

E1000E = ("--vendor", "0x8086", "--class", "0x020000", "--device-id", "0x10d3")
EDU = ("--vendor", "0x1234", "--class", "0x00ff00", "--device-id", "0x11e8")
SnapshotKernel = Callable[[str], FakeKernel]


def test_vm_without_iommu_status_is_calm(snapshot_kernel: SnapshotKernel) -> None:
    kernel = snapshot_kernel("virtio-vm-no-iommu")
    result = invoke(kernel, "status")
    assert result.exit_code == 0
    assert "no Rebellions NPU is present" in result.stdout
    virtio = invoke(kernel, "status", "--json", "--vendor", "0x1af4", "--class", "0x0200")
    (nic,) = virtio.json()["devices"]
    assert nic["iommu_group"] is None
    assert nic["group_viable"] is None


def test_vm_without_iommu_refuses_to_bind(snapshot_kernel: SnapshotKernel) -> None:
    kernel = snapshot_kernel("virtio-vm-no-iommu")
    result = invoke(kernel, "--quiet", "bind-all", "--vendor", "0x1af4", "--class", "0x0200")
    assert result.exit_code != 0
    assert kernel.writes == []
    assert kernel.driver_of("0000:00:03.0") == "virtio-pci"


def test_q35_boot_status_matches_the_snapshot(snapshot_kernel: SnapshotKernel) -> None:
    kernel = snapshot_kernel("q35-boot")
    devices = invoke(kernel, "status", "--json", *E1000E).json()["devices"]
    assert [(d["bdf"], d["driver"], d["iommu_group"], d["group_viable"]) for d in devices] == [
        ("0000:03:00.0", "e1000e", 9, True)
    ]
    edu = invoke(kernel, "status", "--json", *EDU).json()["devices"]
    assert [(d["bdf"], d["iommu_group"], d["group_viable"]) for d in edu] == [
        ("0000:00:04.0", 3, True),
        ("0000:02:02.0", 8, False),  # behind the PCIe-to-PCI bridge on shpchp
    ]


def test_q35_bind_all_and_back(snapshot_kernel: SnapshotKernel) -> None:
    kernel = snapshot_kernel("q35-vfio-loaded")
    bind = invoke(kernel, "bind-all", *E1000E)
    assert bind.exit_code == 0, bind.stdout + bind.stderr
    assert kernel.driver_of("0000:03:00.0") == "vfio-pci"
    assert "9" in kernel.vfio_devs()
    kernel.clear_writes()
    assert invoke(kernel, "bind-all", *E1000E).exit_code == 0
    assert kernel.writes == []
    back = invoke(kernel, "unbind-all", *E1000E)
    assert back.exit_code == 0, back.stdout
    assert kernel.driver_of("0000:03:00.0") == "e1000e"
    assert kernel.override_of("0000:03:00.0") is None
    assert "9" not in kernel.vfio_devs()


def test_q35_multifunction_sibling_refused(snapshot_kernel: SnapshotKernel) -> None:
    kernel = snapshot_kernel("q35-vfio-loaded")
    result = invoke(kernel, "bind", "0000:00:05.0", "--vendor", "0x8086", "--class", "0x020000")
    assert result.exit_code == 1
    assert "0000:00:05.1 on virtio-pci" in result.stdout
    assert kernel.writes == []


def test_q35_edu_behind_bridge_refused_own_group_bound(snapshot_kernel: SnapshotKernel) -> None:
    kernel = snapshot_kernel("q35-vfio-loaded")
    result = invoke(kernel, "bind-all", *EDU)
    assert result.exit_code == 1
    assert kernel.driver_of("0000:00:04.0") == "vfio-pci"
    assert kernel.driver_of("0000:02:02.0") is None
    assert "bridge 0000:01:00.0 on shpchp" in result.stdout


def test_q35_two_bound_unbind_all(snapshot_kernel: SnapshotKernel) -> None:
    kernel = snapshot_kernel("q35-two-bound")
    status = invoke(kernel, "status", "--json", *E1000E).json()["devices"]
    assert status[0]["driver"] == "vfio-pci"
    assert status[0]["vfio_node"] == f"{kernel.dev_root}/vfio/9"
    assert invoke(kernel, "unbind-all", *E1000E).exit_code == 0
    assert kernel.driver_of("0000:03:00.0") == "e1000e"
    edu = invoke(kernel, "unbind-all", *EDU)
    assert edu.exit_code == 0, edu.stdout
    assert kernel.driver_of("0000:00:04.0") is None  # edu has no native driver: stays driverless
    assert kernel.override_of("0000:00:04.0") is None
    assert kernel.vfio_devs() <= {"vfio"}

"""The sysfs layer reads garbage calmly and writes through one unbuffered os.write."""

from __future__ import annotations

from pyfakefs.fake_filesystem import FakeFilesystem

from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.sysfs import Sysfs

BDF = PciAddress.parse("0000:03:00.0")


def test_non_ascii_digit_group_names_are_ignored_not_a_traceback(fs: FakeFilesystem) -> None:
    root = "/node/sys"
    fs.create_dir(f"{root}/kernel/iommu_groups/\u00b2/devices")
    fs.create_dir(f"{root}/kernel/iommu_groups/7/devices")
    fs.create_dir(f"{root}/devices/pci0000:00/{BDF}")
    fs.create_symlink(f"{root}/bus/pci/devices/{BDF}", f"../../../devices/pci0000:00/{BDF}")
    fs.create_symlink(
        f"{root}/devices/pci0000:00/{BDF}/iommu_group", "../../../kernel/iommu_groups/\u00b2"
    )
    sysfs = Sysfs(root, "/node/dev")
    assert sysfs.iommu_group_of(BDF) is None
    assert list(sysfs.iommu_groups()) == [7]
    assert sysfs.iommu_group_names() == ["7"]


def test_override_reads_null_as_none_and_missing_as_none(fs: FakeFilesystem) -> None:
    root = "/node/sys"
    base = f"{root}/bus/pci/devices/{BDF}"
    sysfs = Sysfs(root, "/node/dev")
    assert sysfs.override_of(BDF) is None
    fs.create_file(f"{base}/driver_override", contents="(null)\n")
    assert sysfs.override_of(BDF) is None
    fs.create_file(f"{base}/vendor", contents="\xff\xfe garbage")
    assert sysfs.read_device_attr(BDF, "vendor") is not None  # read, not raised

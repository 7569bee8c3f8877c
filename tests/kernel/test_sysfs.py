"""The sysfs layer reads garbage calmly and writes through one unbuffered os.write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from vfio_manager.errors import UsageError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.kernel.verbs import Kernel

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


def test_device_realpath_matches_realpath_on_a_real_tree(tmp_path: Path) -> None:
    """The one-readlink resolution gives what os.path.realpath gives, through a root that is
    itself reached by a symlink (``--sysfs-root`` pointing at a mount)."""
    real_root = tmp_path / "host-sys"
    function = real_root / "devices" / "pci0000:00" / "0000:00:01.0" / str(BDF)
    function.mkdir(parents=True)
    (real_root / "bus" / "pci" / "devices").mkdir(parents=True)
    (real_root / "bus" / "pci" / "devices" / str(BDF)).symlink_to(
        f"../../../devices/pci0000:00/0000:00:01.0/{BDF}"
    )
    (tmp_path / "sys").symlink_to(real_root)
    sysfs = Sysfs(str(tmp_path / "sys"), str(tmp_path / "dev"))
    expected = os.path.realpath(tmp_path / "sys" / "bus" / "pci" / "devices" / str(BDF))
    assert sysfs.device_realpath(BDF) == expected == str(function.resolve())


def test_device_nodes_skip_links_child_functions_and_plain_files(fs: FakeFilesystem) -> None:
    base = f"/sys/devices/pci0000:00/0000:00:01.0/{BDF}"
    fs.create_symlink(f"/sys/bus/pci/devices/{BDF}", base)
    fs.create_file(f"{base}/drm/card0/dev", contents="226:0\n")
    fs.create_file(f"{base}/0000:04:00.0/drm/card1/dev", contents="226:1\n")  # a child function
    fs.create_file(f"{base}/04:00.1/x/dev", contents="226:2\n")  # also a BDF, domain left out
    fs.create_file(f"{base}/dev", contents="1:1\n")  # a file, not a class device
    fs.create_file("/elsewhere/y/dev", contents="9:9\n")
    fs.create_symlink(f"{base}/virtfn0", "/elsewhere")
    assert Sysfs("/sys", "/dev").char_devs_of(BDF) == [("card0", "226:0")]


def test_a_function_unplugged_before_its_nodes_are_read_has_none(fs: FakeFilesystem) -> None:
    """The holders' scan of a function hot-unplugged since the topology was read: no node."""
    fs.create_dir("/sys/bus/pci/devices")
    assert Sysfs("/sys", "/dev").char_devs_of(BDF) == []


BAD_NAMES = ["../evil", "a/b", "vfio-pci/", "..", ".", "", "vfio\0pci", "vfio-pci\nx", "a b"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_verbs_refuse_a_driver_name_that_is_not_one(kernel: FakeKernel, name: str) -> None:
    """A driver name is a path component and an override value: the kernel layer itself
    refuses one that could climb out of its folder or carry a second value, before any write."""
    (npu,) = npu_node(kernel, count=1)
    verbs = Kernel(Sysfs(kernel.sys_root, kernel.dev_root))
    address = PciAddress.parse(npu)
    for verb in (verbs.set_override, verbs.unbind, verbs.bind):
        with pytest.raises(UsageError, match="is not a valid driver name"):
            verb(address, name)
    assert kernel.writes == []
    assert kernel.override_of(npu) is None


@pytest.mark.parametrize("name", BAD_NAMES)
def test_sysfs_refuses_an_attribute_or_file_name_that_is_not_one(
    kernel: FakeKernel, name: str
) -> None:
    (npu,) = npu_node(kernel, count=1)
    sysfs = Sysfs(kernel.sys_root, kernel.dev_root)
    with pytest.raises(UsageError, match="is not a valid"):
        sysfs.write_device_attr(PciAddress.parse(npu), name, "x")
    with pytest.raises(UsageError, match="is not a valid"):
        sysfs.write_driver_file("vfio-pci", name, npu)
    with pytest.raises(UsageError, match="is not a valid"):
        sysfs.write_bus_file(name, npu)
    assert kernel.writes == []


def test_each_verb_writes_nothing_when_there_is_nothing_to_do(kernel: FakeKernel) -> None:
    """A stale plan never writes twice: the override already set (or already clear), the
    driver to unbind not there, a function already bound for drivers_probe."""
    (npu,) = npu_node(kernel, count=1, driver="vfio-pci")
    verbs = Kernel(Sysfs(kernel.sys_root, kernel.dev_root))
    address = PciAddress.parse(npu)
    verbs.set_override(address, "vfio-pci")
    verbs.unbind(address, "rebellions")
    verbs.probe(address)
    assert kernel.writes == []
    verbs.clear_override(address)
    verbs.clear_override(address)
    verbs.unbind(address, "vfio-pci")
    verbs.unbind(address, "vfio-pci")
    assert [w.path.rsplit("/", 1)[-1] for w in kernel.writes] == ["driver_override", "unbind"]

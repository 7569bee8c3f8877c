"""The fake's files look like the kernel's: formats, relative links, module and preflight files."""

from __future__ import annotations

import os
import stat

from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness import FakeKernel
from tests.harness.pci import alias_pattern, modalias, parse_bdf
from tests.harness.topologies import npu_node
from tests.harness_tests._io import dev, read

NPU = "0000:01:00.0"


def test_roots_are_under_node_never_the_real_paths(kernel: FakeKernel) -> None:
    assert (kernel.host_root, kernel.sys_root, kernel.dev_root, kernel.proc_root) == (
        "/node",
        "/node/sys",
        "/node/dev",
        "/node/proc",
    )
    for path in (
        "/node/sys/bus/pci/devices",
        "/node/sys/bus/pci/drivers",
        "/node/dev",
        "/node/sys/kernel/iommu_groups",
        "/node/sys/module",
    ):
        assert os.path.isdir(path), path
    assert not os.path.exists("/sys/bus/pci")  # pyfakefs hides the real machine


def test_attribute_formats_are_the_kernels(kernel: FakeKernel) -> None:
    kernel.add_function(
        NPU,
        vendor=0x1EFF,
        device=0x1220,
        pci_class=0x120000,
        subsystem_vendor=0x1EFF,
        subsystem_device=0x0001,
        revision=1,
        iommu_group=7,
        numa_node=1,
        boot_vga=False,
    )
    expected = {
        "vendor": "0x1eff\n",
        "device": "0x1220\n",
        "class": "0x120000\n",
        "subsystem_vendor": "0x1eff\n",
        "subsystem_device": "0x0001\n",
        "revision": "0x01\n",
        "driver_override": "(null)\n",
        "numa_node": "1\n",
        "boot_vga": "0\n",
        "enable": "0\n",
        "modalias": "pci:v00001EFFd00001220sv00001EFFsd00000001bc12sc00i00\n",
    }
    for name, value in expected.items():
        assert read(kernel, dev(NPU, name)) == value, name
    uevent = read(kernel, dev(NPU, "uevent"))
    assert "PCI_ID=1EFF:1220\n" in uevent
    assert "PCI_SLOT_NAME=0000:01:00.0\n" in uevent
    assert "DRIVER=" not in uevent
    with open(f"{kernel.sys_root}/{dev(NPU, 'config')}", "rb") as handle:
        config = handle.read()
    assert config[:4] == bytes([0xFF, 0x1E, 0x20, 0x12])
    assert config[0x0E] == 0  # normal header
    assert "sriov_numvfs" not in os.listdir(f"{kernel.sys_root}/bus/pci/devices/{NPU}")


def test_links_are_relative_with_the_kernels_depth(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    base = f"{kernel.sys_root}/bus/pci/devices/{npu}"
    port = "0000:00:02.0"
    assert os.readlink(base) == f"../../../devices/pci0000:00/{port}/{npu}"
    assert os.path.realpath(base) == f"{kernel.sys_root}/devices/pci0000:00/{port}/{npu}"
    assert os.readlink(f"{base}/driver") == "../../../../bus/pci/drivers/rebellions"
    assert os.readlink(f"{base}/subsystem") == "../../../../bus/pci"
    group = kernel.group_of(npu)
    assert os.readlink(f"{base}/iommu_group") == f"../../../../kernel/iommu_groups/{group}"
    assert os.readlink(f"{base}/iommu") == "../../../virtual/iommu/dmar0"
    members = f"{kernel.sys_root}/kernel/iommu_groups/{group}/devices"
    assert os.listdir(members) == [npu]
    assert os.readlink(f"{members}/{npu}") == f"../../../../devices/pci0000:00/{port}/{npu}"
    drv = f"{kernel.sys_root}/bus/pci/drivers/rebellions"
    assert os.readlink(f"{drv}/{npu}") == f"../../../../devices/pci0000:00/{port}/{npu}"
    assert os.readlink(f"{drv}/module") == "../../../../module/rebellions"
    # a function on the root bus: one level less
    assert os.readlink(f"{kernel.sys_root}/bus/pci/devices/{port}/driver") == (
        "../../../bus/pci/drivers/pcieport"
    )
    for link in ("driver", "iommu_group", "subsystem"):
        assert os.path.isdir(f"{base}/{link}"), link  # and they all resolve


def test_driver_folder_has_the_kernels_files(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    names = set(os.listdir(f"{kernel.sys_root}/bus/pci/drivers/vfio-pci"))
    assert names == {"bind", "unbind", "new_id", "remove_id", "uevent", "module"}
    assert "module" not in os.listdir(f"{kernel.sys_root}/bus/pci/drivers/pcieport")  # built in
    bus = set(os.listdir(f"{kernel.sys_root}/bus/pci"))
    assert bus == {
        "devices",
        "drivers",
        "drivers_autoprobe",
        "drivers_probe",
        "rescan",
        "resource_alignment",
        "slots",
        "uevent",
    }
    assert read(kernel, "bus/pci/drivers_autoprobe") == "1\n"


def test_modules_are_visible_where_preflight_looks(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    sys_module = f"{kernel.sys_root}/module"
    assert read(kernel, "module/vfio_pci/initstate") == "live\n"
    assert os.listdir(f"{sys_module}/vfio_pci/drivers") == ["pci:vfio-pci"]
    assert os.readlink(f"{sys_module}/vfio_pci/drivers/pci:vfio-pci") == (
        "../../../bus/pci/drivers/vfio-pci"
    )
    assert read(kernel, "module/vfio_iommu_type1/parameters/allow_unsafe_interrupts") == "N\n"
    with open(f"{kernel.proc_root}/modules") as handle:
        lines = handle.read().splitlines()
    names = [line.split()[0] for line in lines]
    assert {"vfio", "vfio_pci", "vfio_pci_core", "vfio_iommu_type1", "rebellions"} <= set(names)
    vfio = next(line for line in lines if line.startswith("vfio "))
    assert vfio.split()[2:4] == ["3", "vfio_pci,vfio_pci_core,vfio_iommu_type1,"]
    assert vfio.split()[4] == "Live"
    release = f"{kernel.host_root}/lib/modules/6.1.0-test"
    with open(f"{release}/modules.dep") as handle:
        dep = handle.read()
    assert (
        "kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko "
        "kernel/drivers/vfio/vfio.ko"
    ) in dep
    with open(f"{release}/modules.alias") as handle:
        alias = handle.read()
    assert "alias pci:v00001EFFd00001220sv*sd*bc*sc*i* rebellions\n" in alias
    assert "alias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci\n" in alias
    with open(f"{kernel.proc_root}/sys/kernel/osrelease") as handle:
        assert handle.read() == "6.1.0-test\n"
    with open(f"{kernel.host_root}/boot/config-6.1.0-test") as handle:
        config = handle.read()
    assert "CONFIG_VFIO_PCI=m\n" in config
    assert "# CONFIG_INTEL_IOMMU_DEFAULT_ON is not set\n" in config
    with open(f"{kernel.proc_root}/cpuinfo") as handle:
        assert "vendor_id\t: GenuineIntel\n" in handle.read()
    assert os.path.exists(f"{kernel.host_root}/sbin/modprobe")


def test_builtin_driver_module_is_listed_as_builtin(kernel: FakeKernel) -> None:
    kernel.add_driver("pci-stub", module="pci_stub", builtin=True, dma_safe=True)
    assert not os.path.exists(f"{kernel.sys_root}/module/pci_stub/initstate")
    assert os.listdir(f"{kernel.sys_root}/module/pci_stub/drivers") == ["pci:pci-stub"]
    with open(f"{kernel.host_root}/lib/modules/6.1.0-test/modules.builtin") as handle:
        assert "kernel/drivers/misc/pci_stub.ko\n" in handle.read()
    with open(f"{kernel.proc_root}/modules") as handle:
        assert "pci_stub" not in handle.read()


def test_iommu_on_evidence(kernel: FakeKernel) -> None:
    assert os.listdir(f"{kernel.sys_root}/class/iommu") == ["dmar0"]
    assert os.path.isdir(f"{kernel.sys_root}/class/iommu/dmar0")
    assert os.path.exists(f"{kernel.sys_root}/firmware/acpi/tables/DMAR")
    with open(f"{kernel.proc_root}/cmdline") as handle:
        assert "intel_iommu=on" in handle.read()
    kernel.set_cmdline("root=/dev/vda1 iommu=pt")
    with open(f"{kernel.proc_root}/cmdline") as handle:
        assert handle.read() == "root=/dev/vda1 iommu=pt\n"


def test_iommu_off_has_no_groups_and_no_units(fs: FakeFilesystem) -> None:
    k = FakeKernel(fs, iommu=False)
    k.add_driver("e1000e", module="e1000e", ids=[(0x8086, 0x10D3)])
    k.add_function(
        "0000:03:00.0",
        vendor=0x8086,
        device=0x10D3,
        pci_class=0x020000,
        driver="e1000e",
        iommu_group=9,
    )
    assert os.listdir(f"{k.sys_root}/kernel/iommu_groups") == []
    assert os.listdir(f"{k.sys_root}/class/iommu") == []
    assert not os.path.exists(f"{k.sys_root}/firmware/acpi/tables/DMAR")
    entries = os.listdir(f"{k.sys_root}/bus/pci/devices/0000:03:00.0")
    assert "iommu_group" not in entries
    assert "iommu" not in entries
    assert k.group_of("0000:03:00.0") is None
    with open(f"{k.proc_root}/cmdline") as handle:
        assert "intel_iommu" not in handle.read()


def test_amd_iommu_unit(fs: FakeFilesystem) -> None:
    k = FakeKernel(fs, iommu_unit="ivhd0")
    assert os.listdir(f"{k.sys_root}/class/iommu") == ["ivhd0"]
    assert os.path.exists(f"{k.sys_root}/firmware/acpi/tables/IVRS")
    with open(f"{k.proc_root}/cpuinfo") as handle:
        assert "AuthenticAMD" in handle.read()


def test_vfio_group_node_is_a_character_device(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1, driver="vfio-pci")
    group = kernel.group_of(NPU)
    assert kernel.vfio_devs() == {"vfio", str(group)}
    for name in ("vfio", str(group)):
        assert stat.S_ISCHR(os.stat(f"{kernel.dev_root}/vfio/{name}").st_mode), name
    assert os.listdir(f"{kernel.sys_root}/bus/pci/devices/{NPU}/vfio-dev") == ["vfio0"]


def test_pci_helpers() -> None:
    assert parse_bdf("0000:03:1f.7") == (0, 3, 0xFF)
    assert modalias(0x8086, 0x10D3, 0x8086, 0, 0x020000) == (
        "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00"
    )
    assert alias_pattern("pci", pci_class=0x060400, class_mask=0xFFFF00) == (
        "pci:v*d*sv*sd*bc06sc04i*"
    )

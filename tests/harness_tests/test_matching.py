"""The matching rules 1-5 (docs/kernel-facts.md K8-K12) and driver_override itself (K3)."""

from __future__ import annotations

import errno

from tests.harness import FakeKernel
from tests.harness.pci import best_alias
from tests.harness.topologies import npu_node
from tests.harness_tests._io import add_simple, dev, drv, read, write, write_errno

NIC, EDU = "0000:03:00.0", "0000:00:04.0"


# -- rule 1: an override that names another driver keeps every other driver away ------------
def test_rule1_override_naming_another_driver_blocks_matching_driver(kernel: FakeKernel) -> None:
    nic, _ = add_simple(kernel)
    write(kernel, drv("e1000e", "unbind"), nic)
    write(kernel, dev(nic, "driver_override"), "some-other-driver\n")
    assert write_errno(kernel, drv("e1000e", "bind"), nic) == errno.ENODEV
    write(kernel, "bus/pci/drivers_probe", nic)
    assert kernel.driver_of(nic) is None  # e1000e's ID table matches, the override wins


# -- rule 2: the named driver matches any device, whatever its ID table ----------------------
def test_rule2_named_driver_binds_a_device_outside_its_table(kernel: FakeKernel) -> None:
    _, edu = add_simple(kernel)
    write(kernel, dev(edu, "driver_override"), "e1000e\n")
    write(kernel, "bus/pci/drivers_probe", edu)
    assert kernel.driver_of(edu) == "e1000e"


# -- rule 3: vfio-pci binds only when the override names it exactly -------------------------
def test_rule3_vfio_pci_needs_the_override(kernel: FakeKernel) -> None:
    nic, edu = add_simple(kernel)
    assert write_errno(kernel, drv("vfio-pci", "bind"), edu) == errno.ENODEV
    write(kernel, "bus/pci/drivers_probe", edu)
    assert kernel.driver_of(edu) is None  # no driver matches edu at all
    write(kernel, drv("e1000e", "unbind"), nic)
    write(kernel, "bus/pci/drivers_probe", nic)
    assert kernel.driver_of(nic) == "e1000e"  # without an override the native driver wins
    write(kernel, dev(edu, "driver_override"), "vfio-pci\n")
    write(kernel, drv("vfio-pci", "bind"), edu)
    assert kernel.driver_of(edu) == "vfio-pci"


def test_rule3_variant_driver_also_needs_its_own_exact_name(kernel: FakeKernel) -> None:
    kernel.add_driver("rebellions", module="rebellions", ids=[(0x1EFF, 0x1220)])
    kernel.add_driver("vfio-pci", module="vfio_pci", vfio=True)
    kernel.add_driver("rbln-vfio-pci", module="rbln_vfio_pci", ids=[(0x1EFF, 0x1220)], vfio=True)
    kernel.add_function(
        "0000:01:00.0", vendor=0x1EFF, device=0x1220, pci_class=0x120000, iommu_group=3
    )
    write(kernel, dev("0000:01:00.0", "driver_override"), "vfio-pci\n")
    assert write_errno(kernel, drv("rbln-vfio-pci", "bind"), "0000:01:00.0") == errno.ENODEV
    write(kernel, dev("0000:01:00.0", "driver_override"), "rbln-vfio-pci\n")
    write(kernel, "bus/pci/drivers_probe", "0000:01:00.0")
    assert kernel.driver_of("0000:01:00.0") == "rbln-vfio-pci"
    assert kernel.vfio_devs() == {"vfio", "3"}


# -- rule 4: the override takes the driver name; the module name matches nothing -------------
def test_rule4_module_name_in_override_leaves_device_driverless(kernel: FakeKernel) -> None:
    nic, _ = add_simple(kernel)
    write(kernel, dev(nic, "driver_override"), "vfio_pci\n")  # accepted: any name is
    assert read(kernel, dev(nic, "driver_override")) == "vfio_pci\n"
    write(kernel, drv("e1000e", "unbind"), nic)
    write(kernel, "bus/pci/drivers_probe", nic)  # succeeds ...
    assert kernel.driver_of(nic) is None  # ... and nothing bound
    assert kernel.writes[-1].error is None


def test_rule4_module_names_use_underscores_modprobe_takes_both(kernel: FakeKernel) -> None:
    kernel.add_vfio_modules(loaded=False)
    assert kernel.run_modprobe(["chroot", "/node", "/sbin/modprobe", "vfio-pci"]) == (0, "", "")
    assert "vfio_pci" in kernel.loaded_modules()
    assert "vfio-pci" in kernel.drivers()
    code, _, err = kernel.run_modprobe(["/sbin/modprobe", "no-such-module"])
    assert code == 1
    assert "Module no_such_module not found" in err


# -- rule 5: variant and native drivers found from the modalias ----------------------------
def test_rule5_modalias_finds_variant_and_native_module(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    kernel.declare_module(
        "rbln_vfio_pci",
        driver="rbln-vfio-pci",
        ids=[(0x1EFF, 0x1220)],
        vfio=True,
        deps=["vfio_pci_core", "vfio"],
    )
    with open(f"{kernel.host_root}/lib/modules/6.1.0-test/modules.alias") as handle:
        aliases = handle.read()
    device_alias = read(kernel, dev(npu, "modalias")).strip()
    # the most specific vfio_pci: alias wins over vfio_pci's own catch-all
    assert "alias vfio_pci:v00001EFFd00001220sv*sd*bc*sc*i* rbln_vfio_pci" in aliases
    assert best_alias(aliases, device_alias, "vfio_pci") == "rbln_vfio_pci"
    assert best_alias(aliases, device_alias, "pci") == "rebellions"  # modprobe -R
    nic_alias = read(kernel, dev("0000:00:19.0", "modalias")).strip()
    assert best_alias(aliases, nic_alias, "vfio_pci") == "vfio_pci"  # no variant: plain one
    # module -> driver through /sys/module/MOD/drivers/pci:NAME once it is loaded
    assert not kernel.fs.exists(f"{kernel.sys_root}/module/rbln_vfio_pci")
    kernel.load_module("rbln_vfio_pci")
    assert kernel.fs.listdir(f"{kernel.sys_root}/module/rbln_vfio_pci/drivers") == [
        "pci:rbln-vfio-pci"
    ]


def test_rule5_class_aliases_are_written_with_wildcards(kernel: FakeKernel) -> None:
    kernel.declare_module("nvme", driver="nvme", classes=[(0x010802, 0xFFFFFF)])
    with open(f"{kernel.host_root}/lib/modules/6.1.0-test/modules.alias") as handle:
        aliases = handle.read()
    assert "alias pci:v*d*sv*sd*bc01sc08i02 nvme\n" in aliases
    assert best_alias(aliases, "pci:v0000144Dd0000A808sv0000144Dsd0000A801bc01sc08i02") == "nvme"


# -- the driver_override file ----------------------------------------------------------------
def test_override_reads_null_until_set_and_is_cut_at_newline(kernel: FakeKernel) -> None:
    nic, _ = add_simple(kernel)
    assert read(kernel, dev(nic, "driver_override")) == "(null)\n"
    assert kernel.override_of(nic) is None
    write(kernel, dev(nic, "driver_override"), "vfio-pci\ntrailing junk")
    assert read(kernel, dev(nic, "driver_override")) == "vfio-pci\n"
    write(kernel, dev(nic, "driver_override"), "vfio-pci")  # no newline: the whole value
    assert kernel.override_of(nic) == "vfio-pci"


def test_override_newline_clears_and_zero_byte_write_does_nothing(kernel: FakeKernel) -> None:
    nic, _ = add_simple(kernel)
    write(kernel, dev(nic, "driver_override"), "vfio-pci\n")
    write(kernel, dev(nic, "driver_override"), b"")  # never reaches the kernel
    assert kernel.override_of(nic) == "vfio-pci"
    assert [w.data for w in kernel.writes] == ["vfio-pci\n"]
    write(kernel, dev(nic, "driver_override"), "\n")
    assert read(kernel, dev(nic, "driver_override")) == "(null)\n"
    write(kernel, dev(nic, "driver_override"), "vfio-pci\n")
    write(kernel, dev(nic, "driver_override"), b"\0")  # strlen() == 0 clears on 6.x kernels
    assert kernel.override_of(nic) is None


def test_override_longer_than_a_page_minus_two_is_einval(kernel: FakeKernel) -> None:
    nic, _ = add_simple(kernel)
    # driver_set_override: len >= PAGE_SIZE - 1 -> EINVAL, so 4094 bytes is the longest
    assert write_errno(kernel, dev(nic, "driver_override"), "x" * 4094) is None
    assert kernel.override_of(nic) == "x" * 4094
    assert write_errno(kernel, dev(nic, "driver_override"), "y" * 4095) == errno.EINVAL
    assert write_errno(kernel, dev(nic, "driver_override"), "z" * 5000) == errno.EINVAL
    assert kernel.override_of(nic) == "x" * 4094  # failed writes change nothing
    assert [w.error for w in kernel.writes] == [None, errno.EINVAL, errno.EINVAL]


def test_override_neither_unbinds_nor_binds(kernel: FakeKernel) -> None:
    nic, edu = add_simple(kernel)
    write(kernel, dev(nic, "driver_override"), "vfio-pci\n")
    assert kernel.driver_of(nic) == "e1000e"
    write(kernel, dev(edu, "driver_override"), "vfio-pci\n")
    assert kernel.driver_of(edu) is None
    assert kernel.vfio_devs() == {"vfio"}

"""`vfio-manager check`, module loading and the gate before bind, through the real CLI.

Every host is a FakeKernel under /node; modprobe goes to ``FakeKernel.run_modprobe`` (the
command line is built by the product and recorded, never run on this machine).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pytest
from click.testing import CliRunner
from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import Run, invoke
from vfio_manager.cli.main import cli
from vfio_manager.host import modules
from vfio_manager.host.modules import RunResult
from vfio_manager.host.preflight import AMD_REMEDY, INTEL_REMEDY, LOAD_REMEDY, NOIOMMU_REMEDY

E1000E = ("--vendor", "0x8086", "--class", "0x020000", "--device-id", "0x10d3")
VIRTIO_NET = ("--vendor", "0x1af4", "--class", "0x0200")
NPU = "0000:01:00.0"
INTEL_GRUB = (
    "add intel_iommu=on to GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub "
    "(Debian/Ubuntu) or grub2-mkconfig -o /boot/grub2/grub.cfg (RHEL/Fedora), and reboot"
)
Modprobe = Callable[[FakeKernel], None]


@pytest.fixture
def modprobe(monkeypatch: pytest.MonkeyPatch) -> Modprobe:
    """Route the product's modprobe runner to a fake kernel (argv recorded in modprobe_calls)."""

    def attach(kernel: FakeKernel) -> None:
        def run(argv: Sequence[str]) -> RunResult:
            return RunResult(*kernel.run_modprobe(argv))

        monkeypatch.setattr(modules, "subprocess_runner", run)

    return attach


@pytest.fixture(autouse=True)
def _never_the_real_modprobe(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(argv: Sequence[str]) -> RunResult:
        raise AssertionError(f"would have run {list(argv)} for real")

    monkeypatch.setattr(modules, "subprocess_runner", refuse)


def checks(result: Run) -> dict[str, dict[str, object]]:
    return {c["name"]: c for c in result.json()["checks"]}


def line_of(result: Run, title: str) -> str:
    (line,) = [ln for ln in result.stdout.splitlines() if ln[2:].startswith(title)]
    return line


def fresh(fs: FakeFilesystem, **options: object) -> FakeKernel:
    return FakeKernel(fs, release="6.1.0-test", **options)  # type: ignore[arg-type]


# -- IOMMU -------------------------------------------------------------------------------------
def test_intel_with_intel_iommu_on_is_ready(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    result = invoke(kernel, "check")
    assert result.exit_code == 0, result.stdout
    assert line_of(result, "IOMMU active").startswith("✓ IOMMU active: on (Intel VT-d)")
    assert "intel_iommu=on is on the kernel command line" in result.stdout
    assert result.stdout.splitlines()[-1] == "READY: the selected functions can be given to VMs"
    assert "\x1b[" not in result.stdout  # no colour when stdout is not a terminal
    assert kernel.writes == []
    assert kernel.modprobe_calls == []


def test_iommu_pt_is_reported_as_fine(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    kernel.set_cmdline("BOOT_IMAGE=/boot/vmlinuz ro intel_iommu=on iommu=pt")
    result = invoke(kernel, "check", "--json")
    assert result.exit_code == 0
    found = checks(result)
    assert "iommu=pt (passthrough for the host's own DMA) is fine for VFIO" in str(
        found["iommu"]["detail"]
    )
    assert found["kernel-cmdline"]["detail"] == "intel_iommu=on; iommu=pt (fine for VFIO)"


def test_intel_default_on_by_kernel_config_without_argument(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    kernel.set_cmdline("BOOT_IMAGE=/boot/vmlinuz root=/dev/sda1 ro quiet")
    kernel.kernel_config["CONFIG_INTEL_IOMMU_DEFAULT_ON"] = "y"
    result = invoke(kernel, "check", "--json")
    assert result.exit_code == 0
    detail = str(checks(result)["iommu"]["detail"])
    assert "the kernel enables it by default (CONFIG_INTEL_IOMMU_DEFAULT_ON=y in " in detail
    assert "/node/boot/config-6.1.0-test" in detail


def test_intel_off_fails_with_exit_3_and_the_grub_remedy(fs: FakeFilesystem) -> None:
    kernel = fresh(fs, iommu=False, cmdline="BOOT_IMAGE=/boot/vmlinuz ro quiet")
    npu_node(kernel, count=1)
    fs.create_file("/node/sys/firmware/acpi/tables/DMAR")  # VT-d in the firmware, off in Linux
    result = invoke(kernel, "check")
    assert result.exit_code == 3
    assert line_of(result, "IOMMU active").startswith("✗ IOMMU active: off")
    assert f"    remedy: {INTEL_REMEDY}" in result.stdout.splitlines()
    assert INTEL_GRUB in result.stdout
    assert "CONFIG_INTEL_IOMMU_DEFAULT_ON is not set" in result.stdout
    assert line_of(result, "IOMMU group for each").startswith("✗")
    assert "NOT READY: 2 of 8 checks failed" in result.stdout
    as_json = invoke(kernel, "check", "--json")
    assert as_json.exit_code == 3
    assert as_json.json()["ok"] is False
    assert checks(as_json)["iommu"]["remedy"] == INTEL_REMEDY
    assert checks(as_json)["iommu-groups"]["remedy"] == (
        "enable the IOMMU (see 'IOMMU active'); every function then gets a group"
    )


def test_a_vm_without_iommu_tables_says_so_in_the_evidence(fs: FakeFilesystem) -> None:
    kernel = fresh(fs, iommu=False, cmdline="ro quiet")
    npu_node(kernel, count=1)
    os.makedirs("/node/sys/firmware/acpi/tables", exist_ok=True)
    result = invoke(kernel, "check")
    assert result.exit_code == 3
    assert "ACPI tables: no DMAR, no IVRS" in result.stdout


def test_intel_iommu_off_argument_is_named(fs: FakeFilesystem) -> None:
    kernel = fresh(fs, iommu=False, cmdline="ro intel_iommu=off")
    npu_node(kernel, count=1)
    found = checks(invoke(kernel, "check", "--json"))
    assert "intel_iommu=off on the kernel command line disables it" in str(found["iommu"]["detail"])
    assert found["iommu"]["remedy"] == (
        f"remove intel_iommu=off from the kernel command line, then {INTEL_REMEDY}"
    )


def test_amd_is_on_by_default(fs: FakeFilesystem) -> None:
    kernel = fresh(fs, iommu_unit="ivhd0")
    npu_node(kernel, count=1)
    result = invoke(kernel, "check", "--json")
    assert result.exit_code == 0, result.stdout
    detail = str(checks(result)["iommu"]["detail"])
    assert detail.startswith("on (AMD-Vi): ")
    assert "AMD-Vi is on by default" in detail


def test_amd_off_asks_for_the_firmware(fs: FakeFilesystem) -> None:
    kernel = fresh(fs, iommu=False, iommu_unit="ivhd0", cmdline="ro amd_iommu=on")
    npu_node(kernel, count=1)
    result = invoke(kernel, "check", "--json")
    assert result.exit_code == 3
    found = checks(result)
    assert found["iommu"]["remedy"] == AMD_REMEDY
    assert "amd_iommu=on is not a valid value" in str(found["iommu"]["remedy"])
    assert "amd_iommu=on (not a valid value; harmless)" in str(found["kernel-cmdline"]["detail"])


def test_no_iommu_mode_fails_as_unusable_for_vms(fs: FakeFilesystem) -> None:
    kernel = fresh(fs, iommu=False, cmdline="ro vfio.enable_unsafe_noiommu_mode=1")
    npu_node(kernel, count=1)
    fs.create_file("/node/sys/module/vfio/parameters/enable_unsafe_noiommu_mode", contents="Y\n")
    fs.create_file("/node/dev/vfio/noiommu-0")
    result = invoke(kernel, "check")
    assert result.exit_code == 3
    line = line_of(result, "no-IOMMU mode off")
    assert line.startswith("✗ no-IOMMU mode off: no-IOMMU mode is on (")
    assert "no-IOMMU groups exist (noiommu-0)" in line
    assert line.endswith("unusable for VM passthrough")
    assert f"    remedy: {NOIOMMU_REMEDY}" in result.stdout.splitlines()
    assert f"    remedy: {INTEL_REMEDY}" in result.stdout.splitlines()


def test_no_iommu_groups_do_not_count_as_an_iommu(fs: FakeFilesystem) -> None:
    """vfio's no-IOMMU mode makes up groups (noiommu-N): they are no evidence of an IOMMU."""
    from vfio_manager.kernel.address import PciAddress
    from vfio_manager.kernel.sysfs import Sysfs
    from vfio_manager.kernel.verbs import Kernel

    kernel = fresh(fs, iommu=False, cmdline="ro quiet")
    npu_node(kernel, count=1, vfio_loaded=True)
    kernel.enable_noiommu()
    fake_kernel = Kernel(Sysfs(kernel.sys_root, kernel.dev_root))  # set up as an admin would
    address = PciAddress.parse(NPU)
    fake_kernel.set_override(address, "vfio-pci")
    fake_kernel.unbind(address, "rebellions")
    fake_kernel.probe(address)
    assert any(n.startswith("noiommu-") for n in kernel.vfio_devs())
    result = invoke(kernel, "check", "--json")
    assert result.exit_code == 3
    found = checks(result)
    assert str(found["iommu"]["detail"]).startswith("off: ")
    assert found["noiommu"]["ok"] is False
    assert found["noiommu"]["remedy"] == NOIOMMU_REMEDY
    assert found["iommu-groups"]["ok"] is False
    assert "(a no-IOMMU group)" in str(found["iommu-groups"]["evidence"])
    status = invoke(kernel, "status", "--json").json()["host"]
    assert status["iommu"] is False
    assert status["noiommu"] is True
    assert (
        invoke(kernel, "status")
        .stdout.splitlines()[0]
        .startswith("host: IOMMU off (no IOMMU groups), no-IOMMU mode on (unusable for VMs)")
    )


def test_vfio_pci_ids_on_the_command_line_is_reported(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    kernel.set_cmdline("ro intel_iommu=on vfio-pci.ids=1eff:1220")
    detail = str(checks(invoke(kernel, "check", "--json"))["kernel-cmdline"]["detail"])
    assert "vfio-pci.ids=1eff:1220: vfio-pci claims every function with this ID at boot" in detail


@pytest.mark.parametrize("where", ["cmdline", "modprobe.d"], ids=["kernel-cmdline", "modprobe.d"])
def test_vfio_pci_ids_in_the_boot_configuration_is_a_warning(
    kernel: FakeKernel, fs: FakeFilesystem, where: str
) -> None:
    """The plain ``vendor:device`` form: after a return to the host, vfio-pci claims the
    function again at the next boot."""
    npu_node(kernel, count=1)
    if where == "cmdline":
        kernel.set_cmdline("ro intel_iommu=on vfio-pci.ids=1eff:1220")
        evidence = "vfio-pci.ids=1eff:1220 on the kernel command line lists 1eff:1220"
    else:
        fs.create_file(
            "/node/etc/modprobe.d/vfio.conf", contents="options vfio-pci ids=1eff:1220\n"
        )
        evidence = (
            "/node/etc/modprobe.d/vfio.conf:1: options vfio-pci ids=1eff:1220 (lists 1eff:1220)"
        )
    result = invoke(kernel, "check", "--json")
    assert result.exit_code == 0  # a warning, not a failure
    found = checks(result)["dynamic-ids"]
    assert found["ok"] is False
    assert found["detail"] == "vfio-pci.ids= names a selected function's ID"
    assert str(found["remedy"]).startswith(
        "echo 1eff 1220 > /sys/bus/pci/drivers/vfio-pci/remove_id; and remove vfio-pci.ids="
    )
    assert isinstance(found["evidence"], list)
    assert evidence in found["evidence"]


def test_an_iommu_on_without_intel_iommu_and_no_kernel_config_is_not_blamed(
    kernel: FakeKernel, fs: FakeFilesystem
) -> None:
    """On, by the platform's default: no reason about a missing intel_iommu=on is made up."""
    npu_node(kernel, count=1)
    kernel.set_cmdline("BOOT_IMAGE=/boot/vmlinuz root=/dev/sda1 ro quiet")
    fs.remove("/node/boot/config-6.1.0-test")
    result = invoke(kernel, "check", "--json")
    assert result.exit_code == 0, result.stdout
    assert "intel_iommu" not in str(checks(result)["iommu"]["detail"])


# -- modules ------------------------------------------------------------------------------------
def test_modules_loaded(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1, vfio_loaded=True)
    found = checks(invoke(kernel, "check", "--json"))
    assert found["vfio-modules"]["ok"] is True
    assert found["vfio-modules"]["detail"] == (
        "vfio loaded, vfio_iommu_type1 loaded, vfio_pci_core loaded, vfio_pci loaded"
    )


def test_modules_built_in(kernel: FakeKernel) -> None:
    npu_node(kernel, count=0, vfio_loaded=False)
    kernel.add_function(NPU, vendor=0x1EFF, device=0x1220, pci_class=0x120000, iommu_group=40)
    # replace the loadable stack with a kernel that has it built in
    fs = kernel.fs
    for name in ("vfio", "vfio_iommu_type1", "vfio_pci_core", "vfio_pci"):
        fs.create_dir(f"/node/sys/module/{name}/parameters")  # built-in: no initstate
    kernel_dir = "/node/lib/modules/6.1.0-test"
    fs.remove(f"{kernel_dir}/modules.dep")
    fs.create_file(f"{kernel_dir}/modules.dep", contents="")
    found = checks(invoke(kernel, "check", "--json"))
    assert found["vfio-modules"]["ok"] is True
    assert found["vfio-modules"]["detail"] == (
        "vfio built-in, vfio_iommu_type1 built-in, vfio_pci_core built-in, vfio_pci built-in"
    )


def test_modules_loadable_fail_check_until_loaded(kernel: FakeKernel, modprobe: Modprobe) -> None:
    npu_node(kernel, count=1, vfio_loaded=False)
    result = invoke(kernel, "check", "--json")
    assert result.exit_code == 3
    found = checks(result)
    assert "vfio_pci loadable (kernel/drivers/vfio/pci/vfio-pci.ko), not loaded" in str(
        found["vfio-modules"]["detail"]
    )
    for name in ("vfio-modules", "vfio-pci-driver", "dev-vfio", "vfio-driver"):
        assert found[name]["ok"] is False
        assert found[name]["remedy"] == LOAD_REMEDY
    assert kernel.modprobe_calls == []  # check is read-only without --load-modules

    modprobe(kernel)
    loaded = invoke(kernel, "check", "--load-modules")
    assert loaded.exit_code == 0, loaded.stdout
    assert kernel.modprobe_calls == [("chroot", "/node", "/sbin/modprobe", "vfio_pci")]
    assert line_of(loaded, "loading modules") == (
        "✓ loading modules: loaded vfio_pci (`chroot /node /sbin/modprobe vfio_pci`)"
    )
    assert kernel.writes == []


def test_modules_blacklisted_are_not_loaded(
    kernel: FakeKernel, modprobe: Modprobe, fs: FakeFilesystem
) -> None:
    npu_node(kernel, count=1, vfio_loaded=False)
    fs.create_file("/node/etc/modprobe.d/blacklist-vfio.conf", contents="blacklist vfio_pci\n")
    modprobe(kernel)
    result = invoke(kernel, "check", "--load-modules", "--json")
    assert result.exit_code == 3
    assert kernel.modprobe_calls == []
    module_check = checks(result)["vfio-modules"]
    assert "vfio_pci blacklisted by `blacklist vfio_pci` " in str(module_check["detail"])
    assert str(module_check["remedy"]).startswith(
        "remove `blacklist vfio_pci` from /node/etc/modprobe.d/blacklist-vfio.conf (line 1), "
        "then load it"
    )


def test_modules_missing(fs: FakeFilesystem) -> None:
    kernel = fresh(fs)
    kernel.add_function(NPU, vendor=0x1EFF, device=0x1220, pci_class=0x120000, iommu_group=1)
    result = invoke(kernel, "check", "--json")
    assert result.exit_code == 3
    module_check = checks(result)["vfio-modules"]
    assert "vfio_pci missing" in str(module_check["detail"])
    assert module_check["remedy"] == (
        "kernel 6.1.0-test ships no vfio, vfio_iommu_type1, vfio_pci_core, vfio_pci module: "
        "install the kernel's extra modules (Ubuntu: linux-modules-extra-6.1.0-test) or boot a "
        "kernel built with CONFIG_VFIO=m, CONFIG_VFIO_IOMMU_TYPE1=m, CONFIG_VFIO_PCI_CORE=m, "
        "CONFIG_VFIO_PCI=m"
    )


def test_module_tree_not_visible_asks_for_the_host_root(fs: FakeFilesystem) -> None:
    kernel = fresh(fs, lib_modules=False)
    kernel.add_function(NPU, vendor=0x1EFF, device=0x1220, pci_class=0x120000, iommu_group=1)
    kernel.kernel_config["CONFIG_VFIO"] = "m"
    remedy = str(checks(invoke(kernel, "check", "--json"))["vfio-modules"]["remedy"])
    assert remedy.startswith("/node/lib/modules/6.1.0-test is not visible: mount the host's /")
    assert "-e HOST_ROOT=/host" in remedy


def test_modprobe_absent(kernel: FakeKernel, modprobe: Modprobe, fs: FakeFilesystem) -> None:
    npu_node(kernel, count=1, vfio_loaded=False)
    fs.remove("/node/sbin/modprobe")
    modprobe(kernel)
    result = invoke(kernel, "check", "--load-modules", "--json")
    assert result.exit_code == 3
    loading = checks(result)["module-loading"]
    assert str(loading["detail"]).startswith("vfio_pci: modprobe is not installed (looked in ")
    assert str(loading["remedy"]).startswith("install kmod on the host (it provides modprobe)")
    assert kernel.modprobe_calls == []
    bind = invoke(kernel, "bind-all")
    assert bind.exit_code == 3
    assert "modprobe is not installed" in bind.stderr
    assert kernel.writes == []


def test_modprobe_failure_is_reported(kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    npu_node(kernel, count=1, vfio_loaded=False)
    calls: list[list[str]] = []

    def failing(argv: Sequence[str]) -> RunResult:
        calls.append(list(argv))
        return RunResult(
            1, "", "modprobe: ERROR: could not insert 'vfio_pci': Operation not permitted\n"
        )

    monkeypatch.setattr(modules, "subprocess_runner", failing)
    result = invoke(kernel, "check", "--load-modules")
    assert result.exit_code == 3
    assert calls == [["chroot", "/node", "/sbin/modprobe", "vfio_pci"]]
    assert line_of(result, "loading modules") == (
        "✗ loading modules: `chroot /node /sbin/modprobe vfio_pci` failed (exit 1): "
        "modprobe: ERROR: could not insert 'vfio_pci': Operation not permitted"
    )
    assert "    remedy: read modprobe's message above" in result.stdout


# -- variant drivers ----------------------------------------------------------------------------
def test_variant_driver_chosen_from_modules_alias(kernel: FakeKernel, modprobe: Modprobe) -> None:
    npu_node(kernel, count=1, vfio_loaded=True)
    kernel.declare_module(
        "rbln_vfio_pci",
        driver="rbln-vfio-pci",
        ids=[(0x1EFF, 0x1220)],
        vfio=True,
        dma_safe=True,
        deps=["vfio_pci_core"],
        path="kernel/drivers/vfio/pci/rbln/rbln-vfio-pci.ko",
    )
    before = checks(invoke(kernel, "check", "--json"))["vfio-driver"]
    assert before["ok"] is True
    assert before["detail"] == (
        f"{NPU}: vfio-pci (variant rbln_vfio_pci is loadable "
        "(kernel/drivers/vfio/pci/rbln/rbln-vfio-pci.ko), not loaded)"
    )
    modprobe(kernel)
    after = invoke(kernel, "check", "--load-modules", "--json")
    assert after.exit_code == 0
    assert kernel.modprobe_calls == [("chroot", "/node", "/sbin/modprobe", "rbln_vfio_pci")]
    assert checks(after)["vfio-driver"]["detail"] == f"{NPU}: rbln-vfio-pci (variant rbln_vfio_pci)"


# -- the gate -------------------------------------------------------------------------------------
def test_bind_all_refuses_with_iommu_off_before_writing_or_loading(
    fs: FakeFilesystem, modprobe: Modprobe
) -> None:
    kernel = fresh(fs, iommu=False, cmdline="ro quiet")
    npu_node(kernel, count=1, vfio_loaded=False)
    modprobe(kernel)
    result = invoke(kernel, "bind-all")
    assert result.exit_code == 3
    assert kernel.writes == []
    assert kernel.modprobe_calls == []  # a host that cannot pass is left exactly as it was
    assert "the host is not ready for VFIO passthrough; nothing was written:" in result.stderr
    assert f"remedy: {INTEL_REMEDY}" in result.stderr
    assert "`vfio-manager check` shows the full checklist" in result.stderr
    assert kernel.driver_of(NPU) == "rebellions"


def test_bind_named_refuses_the_same_way(fs: FakeFilesystem) -> None:
    kernel = fresh(fs, iommu=False, cmdline="ro quiet")
    npu_node(kernel, count=1)
    result = invoke(kernel, "bind", NPU)
    assert result.exit_code == 3
    assert kernel.writes == []
    assert f"remedy: {INTEL_REMEDY}" in result.stderr


def test_bind_all_loads_modules_then_binds(kernel: FakeKernel, modprobe: Modprobe) -> None:
    npu_node(kernel, count=1, vfio_loaded=False)
    modprobe(kernel)
    result = invoke(kernel, "bind-all")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert kernel.modprobe_calls == [("chroot", "/node", "/sbin/modprobe", "vfio_pci")]
    assert result.stdout.splitlines()[0] == (
        "host: loaded vfio_pci (`chroot /node /sbin/modprobe vfio_pci`)"
    )
    assert kernel.driver_of(NPU) == "vfio-pci"
    events = [e for e in result.log_events() if e.get("step") == "load-module"]
    assert events[0]["argv"] == ["chroot", "/node", "/sbin/modprobe", "vfio_pci"]


def _modprobe_failing_for(
    monkeypatch: pytest.MonkeyPatch, kernel: FakeKernel, failing: str
) -> None:
    """modprobe loads every module but ``failing``, for which it exits 1 (the kernel refused)."""

    def run(argv: Sequence[str]) -> RunResult:
        if argv[-1] == failing:
            kernel.modprobe_calls.append(tuple(argv))
            return RunResult(1, "", f"modprobe: ERROR: could not insert '{failing}': Invalid\n")
        return RunResult(*kernel.run_modprobe(argv))

    monkeypatch.setattr(modules, "subprocess_runner", run)


def test_a_failed_module_load_stops_a_bind_before_its_first_write(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    npu_node(kernel, count=1, vfio_loaded=False)
    _modprobe_failing_for(monkeypatch, kernel, "vfio_pci")
    result = invoke(kernel, "bind", NPU)
    assert result.exit_code == 3, result.stdout
    assert kernel.modprobe_calls == [("chroot", "/node", "/sbin/modprobe", "vfio_pci")]
    assert kernel.writes == []  # no driver_override, no drivers_probe for a driver not there
    assert "could not insert 'vfio_pci'" in result.stderr
    assert kernel.driver_of(NPU) == "rebellions"


def test_a_failed_variant_load_stops_a_bind_before_its_first_write(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the load's own check fails here: vfio-pci is up, the variant it would have picked
    is not; binding anyway would write the name of a driver that is not registered."""
    npu_node(kernel, count=1, vfio_loaded=True)
    kernel.declare_module(
        "rbln_vfio_pci",
        driver="rbln-vfio-pci",
        ids=[(0x1EFF, 0x1220)],
        vfio=True,
        dma_safe=True,
        deps=["vfio_pci_core"],
        path="kernel/drivers/vfio/pci/rbln/rbln-vfio-pci.ko",
    )
    _modprobe_failing_for(monkeypatch, kernel, "rbln_vfio_pci")
    result = invoke(kernel, "bind-all", "--json")
    assert result.exit_code == 3, result.stdout
    error = result.json()["error"]
    assert error["code"] == 3
    assert "could not insert 'rbln_vfio_pci'" in error["message"]
    assert kernel.modprobe_calls == [("chroot", "/node", "/sbin/modprobe", "rbln_vfio_pci")]
    assert kernel.writes == []
    assert kernel.driver_of(NPU) == "rebellions"


def test_bind_all_no_load_modules_refuses(kernel: FakeKernel, modprobe: Modprobe) -> None:
    npu_node(kernel, count=1, vfio_loaded=False)
    modprobe(kernel)
    result = invoke(kernel, "bind-all", "--no-load-modules")
    assert result.exit_code == 3
    assert kernel.modprobe_calls == []
    assert kernel.writes == []
    assert f"remedy: {LOAD_REMEDY}" in result.stderr


def test_bind_all_dry_run_says_what_it_would_load(kernel: FakeKernel, modprobe: Modprobe) -> None:
    npu_node(kernel, count=1, vfio_loaded=False)
    modprobe(kernel)
    result = invoke(kernel, "bind-all", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        "host: would load vfio_pci, vfio, vfio_iommu_type1, vfio_pci_core with modprobe "
        "first (dry run)"
    )
    assert kernel.modprobe_calls == []
    assert kernel.writes == []
    refused = invoke(kernel, "bind-all", "--dry-run", "--no-load-modules")
    assert refused.exit_code == 3


def test_unbind_is_not_gated(fs: FakeFilesystem) -> None:
    kernel = fresh(fs, iommu=False, cmdline="ro quiet")
    npu_node(kernel, count=1)
    assert invoke(kernel, "unbind-all").exit_code == 0


def test_nothing_selected_skips_the_gate(fs: FakeFilesystem) -> None:
    kernel = fresh(fs, iommu=False, cmdline="ro quiet")
    result = invoke(kernel, "bind-all")
    assert result.exit_code == 0
    assert "nothing to do" in result.stdout


# -- status --------------------------------------------------------------------------------------
def test_status_shows_the_host_line_and_json_key(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    table = invoke(kernel, "status")
    assert table.stdout.splitlines()[0].startswith("host: IOMMU on (")
    assert table.stdout.splitlines()[0].endswith(", dmar0), vfio-pci registered")
    as_json = invoke(kernel, "status", "--json").json()
    assert as_json["host"]["iommu"] is True
    assert as_json["host"]["iommu_units"] == ["dmar0"]
    assert as_json["host"]["vfio_pci_registered"] is True
    assert [d["bdf"] for d in as_json["devices"]] == [NPU]


def test_status_host_line_when_not_ready(fs: FakeFilesystem, modprobe: Modprobe) -> None:
    kernel = fresh(fs, iommu=False, cmdline="ro quiet")
    npu_node(kernel, count=1, vfio_loaded=False)
    modprobe(kernel)
    result = invoke(kernel, "status")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == (
        "host: IOMMU off (no IOMMU groups), vfio-pci not registered; see `vfio-manager check`"
    )
    assert invoke(kernel, "status", "--json").json()["host"] == {
        "iommu": False,
        "iommu_groups": 0,
        "iommu_units": [],
        "vfio_pci_registered": False,
        "noiommu": False,
    }
    assert kernel.modprobe_calls == []
    assert kernel.writes == []


# -- output --------------------------------------------------------------------------------------
def test_json_shape(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    doc = invoke(kernel, "check", "--json").json()
    assert set(doc) == {"ok", "checks"}
    assert doc["ok"] is True
    for check in doc["checks"]:
        assert {"name", "ok", "detail", "remedy"} <= set(check)


def test_colour_only_on_a_terminal(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    args = [
        "--sysfs-root",
        kernel.sys_root,
        "--dev-root",
        kernel.dev_root,
        "--host-root",
        kernel.host_root,
        "check",
    ]
    coloured = CliRunner().invoke(cli, args, color=True)
    assert "\x1b[32m✓\x1b[0m IOMMU active" in coloured.output
    plain = CliRunner().invoke(cli, args)
    assert plain.output.splitlines()[1].startswith("✓ IOMMU active")


def test_help_lists_the_load_options(kernel: FakeKernel) -> None:
    assert "--load-modules / --no-load-modules" in invoke(kernel, "check", "--help").stdout
    assert "--load-modules / --no-load-modules" in invoke(kernel, "bind-all", "--help").stdout


# -- the recorded machines ----------------------------------------------------------------------
SnapshotKernel = Callable[..., FakeKernel]


def test_snapshot_vm_without_iommu_fails_with_the_vendor_remedy(
    snapshot_kernel: SnapshotKernel,
) -> None:
    kernel = snapshot_kernel("virtio-vm-no-iommu")
    result = invoke(kernel, "check", *VIRTIO_NET)
    assert result.exit_code == 3
    assert line_of(result, "IOMMU active").startswith("✗ IOMMU active: off")
    remedy = checks(invoke(kernel, "check", "--json", *VIRTIO_NET))["iommu"]["remedy"]
    assert remedy in (INTEL_REMEDY, AMD_REMEDY) or (
        INTEL_REMEDY in str(remedy) and AMD_REMEDY in str(remedy)
    )
    assert "intel_iommu=on" in result.stdout or "AMD-Vi" in result.stdout
    assert kernel.writes == []


def test_snapshot_q35_boot_passes_once_vfio_is_loaded(
    snapshot_kernel: SnapshotKernel, modprobe: Modprobe
) -> None:
    kernel = snapshot_kernel("q35-boot")
    before = invoke(kernel, "check", "--json", *E1000E)
    assert before.exit_code == 3
    assert {name for name, c in checks(before).items() if not c["ok"]} == {
        "vfio-modules",
        "vfio-pci-driver",
        "dev-vfio",
        "vfio-driver",
    }
    modprobe(kernel)
    after = invoke(kernel, "check", "--load-modules", *E1000E)
    assert after.exit_code == 0, after.stdout
    assert kernel.modprobe_calls == [("chroot", "/node", "/sbin/modprobe", "vfio_pci")]
    assert invoke(kernel, "check", *E1000E).exit_code == 0
    assert kernel.writes == []


@pytest.mark.parametrize("name", ["q35-vfio-loaded", "q35-two-bound"])
def test_snapshot_q35_with_vfio_loaded_passes(snapshot_kernel: SnapshotKernel, name: str) -> None:
    kernel = snapshot_kernel(name)
    result = invoke(kernel, "check", *E1000E)
    assert result.exit_code == 0, result.stdout
    assert "✓ IOMMU active: on (Intel VT-d): 10 IOMMU group(s), units dmar0" in result.stdout
    assert line_of(result, "vfio driver for each").endswith("0000:03:00.0: vfio-pci")
    assert kernel.writes == []


def test_host_root_from_the_environment(kernel: FakeKernel, modprobe: Modprobe) -> None:
    npu_node(kernel, count=1, vfio_loaded=False)
    modprobe(kernel)
    args = [
        "--sysfs-root",
        kernel.sys_root,
        "--dev-root",
        kernel.dev_root,
        "check",
        "--load-modules",
    ]
    result = CliRunner().invoke(cli, args, env={"HOST_ROOT": "/node"})
    assert result.exit_code == 0, result.output
    assert kernel.modprobe_calls == [("chroot", "/node", "/sbin/modprobe", "vfio_pci")]

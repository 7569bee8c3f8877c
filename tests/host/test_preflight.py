"""The checks are pure functions of HostFacts: each scenario is a set of facts, no file system.

Every failing check's remedy is asserted, verbatim where the text is fixed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from vfio_manager.host import preflight
from vfio_manager.host.facts import FunctionFacts, HostFacts, parse_cmdline
from vfio_manager.host.modules import Blacklisting, LoadAttempt, ModuleInfo, ModuleState
from vfio_manager.host.preflight import (
    AMD_REMEDY,
    CONTAINER_DEV,
    CONTAINER_HOST_ROOT,
    INTEL_REMEDY,
    LOAD_REMEDY,
    MODPROBE_MISSING_REMEDY,
    NOIOMMU_REMEDY,
    Check,
    Preflight,
    PreflightFailed,
    evaluate,
)
from vfio_manager.host.summary import HostSummary

INTEL_GRUB = (
    "add intel_iommu=on to GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub "
    "(Debian/Ubuntu) or grub2-mkconfig -o /boot/grub2/grub.cfg (RHEL/Fedora), and reboot"
)
LOADED = {
    n: ModuleInfo(n, ModuleState.LOADED, (f"/node/sys/module/{n}/initstate: live",))
    for n in ("vfio", "vfio_pci", "vfio_pci_core", "vfio_iommu_type1")
}
E1000E = FunctionFacts("0000:03:00.0", "8086:10d3", 9)


def facts(**changes: Any) -> HostFacts:
    """A ready Intel host (Debian 6.1, vfio loaded, one selected function in group 9)."""
    base = HostFacts(
        sysfs_root="/node/sys",
        dev_root="/node/dev",
        host_root="/node",
        release="6.1.0-56-amd64",
        iommu_groups=10,
        iommu_units=("dmar0",),
        acpi_tables=frozenset({"DMAR"}),
        cmdline="BOOT_IMAGE=/boot/vmlinuz root=/dev/sda1 ro quiet intel_iommu=on",
        config_source="/node/boot/config-6.1.0-56-amd64",
        config={
            "CONFIG_INTEL_IOMMU": "y",
            "CONFIG_INTEL_IOMMU_DEFAULT_ON": "n",
            "CONFIG_AMD_IOMMU": "y",
        },
        cpu_vendor="GenuineIntel",
        noiommu_param="N",
        noiommu_nodes=(),
        noiommu_options=(),
        modules={**LOADED, "iommufd": ModuleInfo("iommufd", ModuleState.MISSING)},
        modules_dir="/node/lib/modules/6.1.0-56-amd64",
        vfio_pci_registered=True,
        dev_vfio_dir=True,
        vfio_container=True,
        iommufd_node=False,
        functions=(E1000E,),
        selection="vendor 0x8086, class 0x020000, device 0x10d3",
    )
    return replace(base, **changes)


def iommu_off(**changes: Any) -> HostFacts:
    return facts(
        iommu_groups=0, iommu_units=(), functions=(replace(E1000E, iommu_group=None),), **changes
    )


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def only_failure(f: HostFacts) -> Check:
    failed = [c for c in evaluate(f) if not c.ok]
    assert len(failed) == 1, [(c.name, c.detail) for c in failed]
    return failed[0]


def with_module(f: HostFacts, name: str, state: ModuleState, **info: Any) -> HostFacts:
    return replace(f, modules={**f.modules, name: ModuleInfo(name, state, **info)})


# -- a ready host -------------------------------------------------------------------------------
def test_ready_intel_host_passes_every_check() -> None:
    checks = evaluate(facts())
    assert [c.name for c in checks] == [
        "iommu",
        "kernel-cmdline",
        "noiommu",
        "iommu-groups",
        "vfio-modules",
        "vfio-pci-driver",
        "dev-vfio",
        "vfio-driver",
        "dynamic-ids",
    ]
    assert all(c.ok for c in checks), [(c.name, c.detail) for c in checks if not c.ok]
    iommu = by_name(checks)["iommu"]
    assert iommu.detail.startswith("on (Intel VT-d): 10 IOMMU group(s), units dmar0")
    assert "intel_iommu=on is on the kernel command line" in iommu.detail
    assert "/node/sys/kernel/iommu_groups: 10 group(s)" in iommu.evidence
    assert iommu.remedy is None


def test_json_record_has_the_documented_keys() -> None:
    record = evaluate(facts())[0].to_json()
    assert {"name", "ok", "detail", "remedy"} <= set(record)
    assert record["remedy"] is None


# -- IOMMU: Intel -------------------------------------------------------------------------------
def test_intel_default_on_by_kernel_config_without_argument() -> None:
    f = facts(
        cmdline="root=/dev/sda1 ro",
        config={"CONFIG_INTEL_IOMMU": "y", "CONFIG_INTEL_IOMMU_DEFAULT_ON": "y"},
    )
    check = by_name(evaluate(f))["iommu"]
    assert check.ok
    assert (
        "the kernel enables it by default (CONFIG_INTEL_IOMMU_DEFAULT_ON=y in "
        "/node/boot/config-6.1.0-56-amd64)" in check.detail
    )


def test_intel_off_without_argument_names_intel_iommu_on_and_grub() -> None:
    check = only_failure_of(iommu_off(cmdline="root=/dev/sda1 ro quiet"), "iommu")
    assert check.detail.startswith(
        "off: /node/sys/kernel/iommu_groups is empty and "
        "/node/sys/class/iommu has no dmar*/ivhd* unit"
    )
    assert (
        "intel_iommu=on is not on the kernel command line and the kernel does not enable "
        "it by default (CONFIG_INTEL_IOMMU_DEFAULT_ON is not set" in check.detail
    )
    assert check.remedy == INTEL_REMEDY
    assert INTEL_GRUB in check.remedy
    assert "enable VT-d" in check.remedy
    assert "vendor: Intel VT-d (ACPI DMAR table)" in check.evidence


def only_failure_of(f: HostFacts, name: str) -> Check:
    check = by_name(evaluate(f))[name]
    assert not check.ok
    return check


def test_intel_iommu_off_argument_is_named_in_detail_and_remedy() -> None:
    check = only_failure_of(iommu_off(cmdline="ro intel_iommu=off"), "iommu")
    assert "intel_iommu=off on the kernel command line disables it" in check.detail
    assert (
        check.remedy == f"remove intel_iommu=off from the kernel command line, then {INTEL_REMEDY}"
    )


def test_iommu_off_argument_is_named_too() -> None:
    check = only_failure_of(iommu_off(cmdline="ro intel_iommu=on iommu=off"), "iommu")
    assert "iommu=off on the kernel command line disables it" in check.detail
    assert check.remedy == f"remove iommu=off from the kernel command line, then {INTEL_REMEDY}"


def test_intel_iommu_on_but_off_points_at_the_firmware() -> None:
    check = only_failure_of(iommu_off(cmdline="ro intel_iommu=on,sm_on"), "iommu")
    assert check.remedy is not None
    assert check.remedy.startswith("intel_iommu=on is already set: enable VT-d")
    assert "firmware (BIOS/UEFI) setup and reboot" in check.remedy


def test_intel_kernel_config_unreadable_is_said() -> None:
    check = only_failure_of(iommu_off(cmdline="ro", config_source=None, config={}), "iommu")
    assert (
        "kernel config not readable: no /boot/config-6.1.0-56-amd64 or /proc/config.gz "
        "under /node" in check.detail
    )
    assert check.remedy == INTEL_REMEDY


def test_intel_kernel_without_intel_iommu_support() -> None:
    f = iommu_off(cmdline="ro intel_iommu=on", config={"CONFIG_INTEL_IOMMU": "n"})
    check = only_failure_of(f, "iommu")
    assert "the kernel is built without CONFIG_INTEL_IOMMU" in check.detail
    assert check.remedy == f"boot a kernel built with CONFIG_INTEL_IOMMU=y, then {INTEL_REMEDY}"


def test_no_dmar_table_blames_the_firmware() -> None:
    check = only_failure_of(iommu_off(acpi_tables=frozenset(), cmdline="ro"), "iommu")
    assert "the firmware exposes no ACPI DMAR or IVRS table" in check.detail
    assert "vendor: Intel VT-d (CPU vendor GenuineIntel)" in check.evidence
    assert check.remedy == INTEL_REMEDY


def test_iommu_pt_is_fine() -> None:
    check = by_name(evaluate(facts(cmdline="ro intel_iommu=on iommu=pt")))["iommu"]
    assert check.ok
    assert "iommu=pt (passthrough for the host's own DMA) is fine for VFIO" in check.detail
    args = by_name(evaluate(facts(cmdline="ro intel_iommu=on iommu=pt")))["kernel-cmdline"]
    assert args.ok
    assert "iommu=pt (fine for VFIO)" in args.detail


def test_iommu_passthrough_1_is_fine() -> None:
    check = by_name(evaluate(facts(cmdline="ro iommu.passthrough=1")))["iommu"]
    assert check.ok
    assert "is fine for VFIO" in check.detail


def test_evidence_decides_over_arguments() -> None:
    """Groups exist although the command line says off: the IOMMU is on (evidence wins)."""
    check = by_name(evaluate(facts(cmdline="ro intel_iommu=off")))["iommu"]
    assert check.ok
    assert "intel_iommu=off" in check.detail


# -- IOMMU: AMD ---------------------------------------------------------------------------------
def amd(**changes: Any) -> HostFacts:
    base: dict[str, Any] = {
        "acpi_tables": frozenset({"IVRS"}),
        "iommu_units": ("ivhd0",),
        "cpu_vendor": "AuthenticAMD",
        "cmdline": "ro quiet",
    }
    return facts(**{**base, **changes})


def test_amd_is_on_by_default() -> None:
    check = by_name(evaluate(amd()))["iommu"]
    assert check.ok
    assert check.detail.startswith("on (AMD-Vi): 10 IOMMU group(s), units ivhd0")
    assert "AMD-Vi is on by default" in check.detail


def test_amd_iommu_on_is_explained_as_not_a_valid_value() -> None:
    checks = by_name(evaluate(amd(cmdline="ro amd_iommu=on")))
    assert checks["iommu"].ok
    assert "amd_iommu=on is not a valid value" in checks["iommu"].detail
    assert "amd_iommu=on (not a valid value; harmless)" in checks["kernel-cmdline"].detail


def test_amd_off_asks_for_the_firmware_not_an_argument() -> None:
    f = replace(
        amd(), iommu_groups=0, iommu_units=(), functions=(replace(E1000E, iommu_group=None),)
    )
    check = only_failure_of(f, "iommu")
    assert check.remedy == AMD_REMEDY
    assert "enable AMD-Vi/IOMMU" in check.remedy
    assert "amd_iommu=on is not a valid value" in check.remedy
    assert "intel_iommu" not in check.remedy


def test_amd_iommu_off_must_be_removed() -> None:
    f = replace(amd(cmdline="ro amd_iommu=off"), iommu_groups=0, iommu_units=())
    check = only_failure_of(f, "iommu")
    assert "amd_iommu=off on the kernel command line disables it" in check.detail
    assert check.remedy is not None
    assert check.remedy.startswith(
        "remove amd_iommu=off from GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub "
        "(Debian/Ubuntu) or grub2-mkconfig -o /boot/grub2/grub.cfg (RHEL/Fedora), and reboot"
    )
    assert check.remedy.endswith(AMD_REMEDY)


def test_vendor_from_cpuinfo_when_there_are_no_tables() -> None:
    f = iommu_off(acpi_tables=None, cpu_vendor="AuthenticAMD", cmdline="ro")
    assert only_failure_of(f, "iommu").remedy == AMD_REMEDY


def test_vendor_from_the_command_line_as_a_last_resort() -> None:
    f = iommu_off(acpi_tables=None, cpu_vendor=None, cmdline="ro intel_iommu=off")
    check = only_failure_of(f, "iommu")
    assert "vendor: Intel VT-d (intel_iommu= on the kernel command line)" in check.evidence
    assert (
        check.remedy == f"remove intel_iommu=off from the kernel command line, then {INTEL_REMEDY}"
    )


def test_unknown_vendor_gets_both_remedies_and_the_vm_hint() -> None:
    f = iommu_off(acpi_tables=frozenset(), cpu_vendor=None, cmdline="console=ttyS0")
    check = only_failure_of(f, "iommu")
    assert check.remedy is not None
    assert f"Intel: {INTEL_REMEDY}" in check.remedy
    assert f"AMD: {AMD_REMEDY}" in check.remedy
    assert "-device intel-iommu" in check.remedy


# -- kernel arguments ---------------------------------------------------------------------------
def test_vfio_pci_ids_is_reported_as_claiming_every_function_of_the_id() -> None:
    check = by_name(evaluate(facts(cmdline="ro intel_iommu=on vfio-pci.ids=8086:10d3")))
    assert check["kernel-cmdline"].ok
    assert (
        "vfio-pci.ids=8086:10d3: vfio-pci claims every function with this ID at boot, "
        "selected or not"
    ) in check["kernel-cmdline"].detail


def test_unreadable_cmdline_is_not_a_failure() -> None:
    check = by_name(evaluate(facts(cmdline=None)))["kernel-cmdline"]
    assert check.ok
    assert "not readable at /node/proc/cmdline" in check.detail


def test_cmdline_parsing_quotes_dashes_and_the_init_separator() -> None:
    args = parse_cmdline('ro dyndbg="file vfio.c +p" vfio-pci.ids=1eff:1220 -- intel_iommu=off')
    assert args["dyndbg"] == ["file vfio.c +p"]
    assert args["vfio_pci.ids"] == ["1eff:1220"]
    assert "intel_iommu" not in args  # after "--" the arguments belong to init


# -- no-IOMMU mode ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes",
    [
        {"noiommu_param": "Y"},
        {"noiommu_nodes": ("noiommu-0",)},
        {"noiommu_param": None, "cmdline": "ro vfio.enable_unsafe_noiommu_mode=1"},
        {
            "noiommu_param": None,
            "noiommu_options": (
                "/node/etc/modprobe.d/vfio.conf:1: options vfio enable_unsafe_noiommu_mode=1",
            ),
        },
    ],
)
def test_noiommu_mode_fails(changes: dict[str, Any]) -> None:
    f = iommu_off(**changes)
    check = by_name(evaluate(f))["noiommu"]
    assert not check.ok
    assert check.detail.startswith("no-IOMMU mode is on")
    assert check.detail.endswith("unusable for VM passthrough")
    assert check.remedy == NOIOMMU_REMEDY
    assert by_name(evaluate(f))["iommu"].ok is False


def test_noiommu_off_passes() -> None:
    check = by_name(evaluate(facts()))["noiommu"]
    assert check.ok
    assert check.detail == "not enabled"


# -- modules --------------------------------------------------------------------------------------
def test_built_in_modules_pass() -> None:
    f = facts(
        modules={
            **{n: ModuleInfo(n, ModuleState.BUILTIN) for n in LOADED},
            "iommufd": ModuleInfo("iommufd", ModuleState.MISSING),
        }
    )
    check = by_name(evaluate(f))["vfio-modules"]
    assert check.ok
    assert check.detail == (
        "vfio built-in, vfio_iommu_type1 built-in, vfio_pci_core built-in, vfio_pci built-in"
    )


def not_loaded(**modules: ModuleInfo) -> HostFacts:
    return facts(
        modules={**LOADED, "iommufd": ModuleInfo("iommufd", ModuleState.MISSING), **modules},
        vfio_pci_registered=False,
    )


def test_loadable_modules_fail_with_the_load_remedy_and_are_fixable_by_loading() -> None:
    f = not_loaded(
        vfio_pci=ModuleInfo(
            "vfio_pci", ModuleState.LOADABLE, path="kernel/drivers/vfio/pci/vfio-pci.ko"
        )
    )
    checks = by_name(evaluate(f))
    assert not checks["vfio-modules"].ok
    assert (
        "vfio_pci loadable (kernel/drivers/vfio/pci/vfio-pci.ko), not loaded"
        in checks["vfio-modules"].detail
    )
    assert checks["vfio-modules"].remedy == LOAD_REMEDY
    assert checks["vfio-modules"].load == ("vfio_pci",)
    assert checks["vfio-pci-driver"].remedy == LOAD_REMEDY
    assert checks["vfio-pci-driver"].detail.startswith(
        "/node/sys/bus/pci/drivers/vfio-pci is absent"
    )
    assert checks["vfio-driver"].load == ("vfio_pci",)
    result = Preflight(tuple(evaluate(f)), pending=("vfio_pci",))
    assert result.blocking(assume_loaded=True) == ()
    assert {c.name for c in result.blocking()} == {"vfio-modules", "vfio-pci-driver", "vfio-driver"}
    assert preflight.modules_to_load(f) == ["vfio_pci"]


def test_blacklisted_module_names_the_line_to_remove() -> None:
    where = "/node/etc/modprobe.d/no-vfio.conf:3"
    info = ModuleInfo(
        "vfio_pci",
        ModuleState.BLACKLISTED,
        blacklisting=Blacklisting("blacklist", where, "blacklist vfio_pci"),
        path="kernel/drivers/vfio/pci/vfio-pci.ko",
    )
    checks = by_name(evaluate(not_loaded(vfio_pci=info)))
    assert (
        "vfio_pci blacklisted by `blacklist vfio_pci` (/node/etc/modprobe.d/no-vfio.conf:3)"
        in checks["vfio-modules"].detail
    )
    remedy = (
        "remove `blacklist vfio_pci` from /node/etc/modprobe.d/no-vfio.conf (line 3), then load it"
    )
    assert checks["vfio-modules"].remedy == remedy
    assert checks["vfio-modules"].load == ()  # loading would not help: not fixable
    assert checks["vfio-pci-driver"].remedy == remedy
    assert preflight.modules_to_load(not_loaded(vfio_pci=info)) == []


def test_module_blacklist_on_the_command_line() -> None:
    info = ModuleInfo(
        "vfio_pci",
        ModuleState.BLACKLISTED,
        blacklisting=Blacklisting(
            "module_blacklist", "the kernel command line", "module_blacklist=vfio_pci"
        ),
    )
    check = by_name(evaluate(not_loaded(vfio_pci=info)))["vfio-modules"]
    assert check.remedy is not None
    assert check.remedy.startswith(
        "remove module_blacklist=vfio_pci from GRUB_CMDLINE_LINUX in "
        "/etc/default/grub, run update-grub"
    )


def test_missing_module_asks_for_the_extra_modules_package() -> None:
    info = ModuleInfo("vfio_pci", ModuleState.MISSING)
    check = by_name(evaluate(not_loaded(vfio_pci=info)))["vfio-modules"]
    assert check.remedy == (
        "kernel 6.1.0-56-amd64 ships no vfio_pci module: install the kernel's extra modules "
        "(Ubuntu: linux-modules-extra-6.1.0-56-amd64) or boot a kernel built with "
        "CONFIG_VFIO_PCI=m"
    )


def test_missing_module_tree_in_a_container_asks_for_the_host_root() -> None:
    info = ModuleInfo("vfio_pci", ModuleState.MISSING, tree_visible=False)
    check = by_name(evaluate(not_loaded(vfio_pci=info)))["vfio-modules"]
    assert "vfio_pci missing (the kernel's module tree is not visible)" in check.detail
    assert check.remedy == f"/node/lib/modules/6.1.0-56-amd64 is not visible: {CONTAINER_HOST_ROOT}"


def test_module_not_built_per_kernel_config() -> None:
    info = ModuleInfo(
        "vfio_pci", ModuleState.MISSING, note="the kernel is built without CONFIG_VFIO_PCI"
    )
    check = by_name(evaluate(not_loaded(vfio_pci=info)))["vfio-modules"]
    assert check.remedy == (
        "kernel 6.1.0-56-amd64 is built without CONFIG_VFIO_PCI: boot a "
        "kernel built with them as modules (=m; distribution kernels are)"
    )


def test_vfio_pci_core_is_required_only_where_it_exists() -> None:
    old = facts(
        release="5.10.0-30-amd64",
        modules={
            **LOADED,
            "vfio_pci_core": ModuleInfo("vfio_pci_core", ModuleState.MISSING),
            "iommufd": ModuleInfo("iommufd", ModuleState.MISSING),
        },
    )
    assert preflight.required_modules(old) == ("vfio", "vfio_iommu_type1", "vfio_pci")
    assert by_name(evaluate(old))["vfio-modules"].ok
    assert preflight.required_modules(facts()) == (
        "vfio",
        "vfio_iommu_type1",
        "vfio_pci_core",
        "vfio_pci",
    )


def test_iommufd_is_the_backend_when_type1_does_not_exist() -> None:
    f = facts(
        modules={
            **LOADED,
            "vfio_iommu_type1": ModuleInfo("vfio_iommu_type1", ModuleState.MISSING),
            "iommufd": ModuleInfo("iommufd", ModuleState.BUILTIN),
        },
        vfio_container=False,
        iommufd_node=True,
    )
    checks = by_name(evaluate(f))
    assert preflight.required_modules(f) == ("vfio", "iommufd", "vfio_pci_core", "vfio_pci")
    assert checks["vfio-modules"].ok
    assert checks["dev-vfio"].ok
    assert "iommufd replaces the container" in checks["dev-vfio"].detail


def test_vfio_pci_loaded_but_not_registered_points_at_dmesg() -> None:
    check = only_failure_of(facts(vfio_pci_registered=False), "vfio-pci-driver")
    assert check.remedy is not None
    assert check.remedy.startswith(
        "vfio_pci is loaded but did not register: see `dmesg | grep vfio`"
    )


# -- /dev/vfio/vfio -----------------------------------------------------------------------------
def test_dev_vfio_missing_in_a_container_is_explained() -> None:
    check = only_failure(facts(vfio_container=False, dev_vfio_dir=False))
    assert check.name == "dev-vfio"
    assert "its /dev/vfio directory is missing under /node/dev" in check.detail
    assert check.remedy == CONTAINER_DEV


def test_dev_vfio_missing_because_vfio_is_not_loaded() -> None:
    f = replace(
        not_loaded(
            vfio=ModuleInfo("vfio", ModuleState.LOADABLE, path="kernel/drivers/vfio/vfio.ko")
        ),
        vfio_pci_registered=True,
        vfio_container=False,
    )
    check = by_name(evaluate(f))["dev-vfio"]
    assert not check.ok
    assert "(loading vfio creates it)" in check.detail
    assert check.remedy == LOAD_REMEDY
    assert check.load == ("vfio",)


# -- per function -------------------------------------------------------------------------------
def test_function_without_iommu_group_fails() -> None:
    f = facts(functions=(E1000E, FunctionFacts("0000:00:05.0", "8086:100e", None)))
    check = only_failure(f)
    assert check.name == "iommu-groups"
    assert check.detail == "no IOMMU group: 0000:00:05.0"
    assert check.remedy is not None
    assert check.remedy.startswith("the IOMMU does not cover these functions")


def test_no_selected_function_is_not_a_failure() -> None:
    checks = by_name(evaluate(facts(functions=(), selection="vendor 0x1eff, class 0x120000")))
    assert checks["iommu-groups"].ok
    assert checks["iommu-groups"].detail == "no PCI function matches vendor 0x1eff, class 0x120000"
    assert checks["vfio-driver"].ok


def test_variant_driver_is_named_when_registered() -> None:
    variant = FunctionFacts(
        "0000:03:00.0",
        "1eff:1220",
        9,
        "rbln_vfio_pci",
        ModuleInfo("rbln_vfio_pci", ModuleState.LOADED),
        "rbln-vfio-pci",
    )
    check = by_name(evaluate(facts(functions=(variant,), vfio_pci_registered=False)))["vfio-driver"]
    assert check.ok
    assert check.detail == "0000:03:00.0: rbln-vfio-pci (variant rbln_vfio_pci)"


def test_loadable_variant_falls_back_to_vfio_pci_and_is_loaded_on_request() -> None:
    variant = FunctionFacts(
        "0000:03:00.0",
        "1eff:1220",
        9,
        "rbln_vfio_pci",
        ModuleInfo(
            "rbln_vfio_pci",
            ModuleState.LOADABLE,
            path="kernel/drivers/vfio/pci/rbln/rbln-vfio-pci.ko",
        ),
    )
    f = facts(functions=(variant,))
    check = by_name(evaluate(f))["vfio-driver"]
    assert check.ok
    assert "vfio-pci (variant rbln_vfio_pci is loadable" in check.detail
    assert preflight.modules_to_load(f) == ["rbln_vfio_pci"]


def test_many_functions_are_summarised() -> None:
    fns = tuple(FunctionFacts(f"0000:{b:02x}:00.0", "1eff:1220", b) for b in range(1, 8))
    check = by_name(evaluate(facts(functions=fns)))["vfio-driver"]
    assert check.detail == (
        "0000:01:00.0, 0000:02:00.0, 0000:03:00.0, 0000:04:00.0 and 3 more: vfio-pci"
    )


# -- loading ------------------------------------------------------------------------------------
def test_failed_modprobe_is_a_failing_check_with_its_message() -> None:
    attempt = LoadAttempt(
        "vfio_pci",
        ("chroot", "/node", "/sbin/modprobe", "vfio_pci"),
        1,
        "modprobe: FATAL: Module vfio_pci not found",
    )
    check = preflight.check_loading(facts(), [attempt])
    assert not check.ok
    assert check.detail == (
        "`chroot /node /sbin/modprobe vfio_pci` failed (exit 1): modprobe: "
        "FATAL: Module vfio_pci not found"
    )
    assert check.remedy is not None
    assert check.remedy.startswith("read modprobe's message above")


def test_absent_modprobe_is_a_failing_check() -> None:
    attempt = LoadAttempt("vfio_pci", (), None, "modprobe is not installed (looked in /node/sbin)")
    check = preflight.check_loading(facts(), [attempt])
    assert not check.ok
    assert check.remedy == MODPROBE_MISSING_REMEDY


def test_gate_error_carries_every_failure_and_its_remedy() -> None:
    f = iommu_off(cmdline="ro")
    result = Preflight(tuple(evaluate(f)))
    err = PreflightFailed(result, result.blocking())
    assert int(err.exit_code) == 3
    assert err.message.startswith(
        "the host is not ready for VFIO passthrough; nothing was written:"
    )
    assert f"remedy: {INTEL_REMEDY}" in err.message
    assert "✗ IOMMU active: off" in err.message
    assert err.remedy == "fix the failures above; `vfio-manager check` shows the full checklist"


def test_checklist_lines_show_marks_evidence_and_remedies() -> None:
    lines = preflight.checklist_lines(evaluate(iommu_off(cmdline="ro")))
    assert lines[0].startswith("✗ IOMMU active: off")
    assert lines[1].startswith("    evidence: /node/sys/kernel/iommu_groups: 0 group(s)")
    assert lines[2] == f"    remedy: {INTEL_REMEDY}"
    assert any(line.startswith("✓ no-IOMMU mode off") for line in lines)


def test_host_summary_line() -> None:
    on = HostSummary(10, ("dmar0",), True)
    assert on.line() == "host: IOMMU on (10 groups, dmar0), vfio-pci registered"
    assert on.to_json() == {
        "iommu": True,
        "iommu_groups": 10,
        "iommu_units": ["dmar0"],
        "vfio_pci_registered": True,
        "noiommu": False,
    }
    off = HostSummary(0, (), False)
    assert off.line() == (
        "host: IOMMU off (no IOMMU groups), vfio-pci not registered; see `vfio-manager check`"
    )

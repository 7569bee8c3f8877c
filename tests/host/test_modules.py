"""Module state from sysfs and the host's files, and modprobe command lines (never run here).

Everything lives on pyfakefs under /node; the modprobe runner is a recorder, so no test can
load a module on this machine.
"""

from __future__ import annotations

import gzip
import sys
from collections.abc import Sequence

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from vfio_manager.host import modules
from vfio_manager.host.files import HostFiles
from vfio_manager.host.modules import (
    LoadAttempt,
    ModuleInventory,
    ModuleState,
    RunResult,
    blacklistings,
    load_modules,
    modprobe_command,
)
from vfio_manager.kernel.sysfs import Sysfs

REL = "6.1.0-test"
MODDIR = f"/node/lib/modules/{REL}"
DEP = (
    "kernel/drivers/vfio/vfio.ko:\n"
    "kernel/drivers/vfio/vfio_iommu_type1.ko: kernel/drivers/vfio/vfio.ko\n"
    "kernel/drivers/vfio/pci/vfio-pci-core.ko.zst: kernel/drivers/vfio/vfio.ko\n"
    "kernel/drivers/vfio/pci/vfio-pci.ko.zst: kernel/drivers/vfio/pci/vfio-pci-core.ko.zst\n"
)


class Recorder:
    """A modprobe runner that records the argument lists and answers from a script."""

    def __init__(self, *results: RunResult) -> None:
        self.calls: list[list[str]] = []
        self.results = list(results)

    def __call__(self, argv: Sequence[str]) -> RunResult:
        self.calls.append(list(argv))
        return self.results.pop(0) if self.results else RunResult(0)


REAL_RUNNER = modules.subprocess_runner  # run once below, on a Python one-liner only


@pytest.fixture(autouse=True)
def _no_real_modprobe(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(argv: Sequence[str]) -> RunResult:
        raise AssertionError(f"a test tried to run {argv} for real")

    monkeypatch.setattr(modules, "subprocess_runner", refuse)


@pytest.fixture
def node(fs: FakeFilesystem) -> FakeFilesystem:
    fs.create_file("/node/proc/sys/kernel/osrelease", contents=REL + "\n")
    fs.create_file("/node/proc/cmdline", contents="ro quiet\n")
    fs.create_file("/node/proc/modules", contents="e1000e 315392 0 - Live 0xffffffffc0315000\n")
    fs.create_dir("/node/sys/module")
    fs.create_file(f"{MODDIR}/modules.dep", contents=DEP)
    fs.create_file(f"{MODDIR}/modules.builtin", contents="kernel/drivers/iommu/iova.ko\n")
    fs.create_file("/node/sbin/modprobe")
    return fs


def inventory(cmdline_args: dict[str, list[str]] | None = None) -> ModuleInventory:
    return ModuleInventory(
        Sysfs("/node/sys", "/node/dev"), HostFiles("/node"), cmdline_args=cmdline_args
    )


# -- states ---------------------------------------------------------------------------------------
def test_loaded_from_initstate(node: FakeFilesystem) -> None:
    node.create_file("/node/sys/module/vfio_pci/initstate", contents="live\n")
    info = inventory().info("vfio-pci")
    assert info.name == "vfio_pci"
    assert info.state is ModuleState.LOADED
    assert info.ok
    assert "/node/sys/module/vfio_pci/initstate: live" in info.evidence


def test_loaded_from_proc_modules(node: FakeFilesystem) -> None:
    node.get_object("/node/proc/modules").set_contents("vfio 49152 3 - Live 0xffffffffc0363000\n")
    info = inventory().info("vfio")
    assert info.state is ModuleState.LOADED
    assert info.evidence == ("/node/proc/modules lists vfio",)


def test_built_in_from_modules_builtin(node: FakeFilesystem) -> None:
    node.get_object(f"{MODDIR}/modules.builtin").set_contents("kernel/drivers/vfio/vfio.ko\n")
    info = inventory().info("vfio")
    assert info.state is ModuleState.BUILTIN
    assert info.ok
    assert f"{MODDIR}/modules.builtin lists vfio" in info.evidence


def test_built_in_from_sys_module_without_initstate(node: FakeFilesystem) -> None:
    node.create_file("/node/sys/module/vfio/parameters/enable_unsafe_noiommu_mode", contents="N\n")
    info = inventory().info("vfio")
    assert info.state is ModuleState.BUILTIN
    assert "/node/sys/module/vfio exists without initstate" in info.evidence


def test_loadable_from_modules_dep_with_compressed_names(node: FakeFilesystem) -> None:
    info = inventory().info("vfio_pci")
    assert info.state is ModuleState.LOADABLE
    assert not info.ok
    assert info.path == "kernel/drivers/vfio/pci/vfio-pci.ko.zst"
    assert info.describe() == "loadable (kernel/drivers/vfio/pci/vfio-pci.ko.zst), not loaded"


def test_loadable_found_by_walking_the_tree_without_modules_dep(node: FakeFilesystem) -> None:
    node.remove(f"{MODDIR}/modules.dep")
    node.create_file(f"{MODDIR}/kernel/drivers/vfio/vfio_iommu_type1.ko.xz")
    info = inventory().info("vfio_iommu_type1")
    assert info.state is ModuleState.LOADABLE
    assert info.path == "kernel/drivers/vfio/vfio_iommu_type1.ko.xz"


def test_missing(node: FakeFilesystem) -> None:
    info = inventory().info("iommufd")
    assert info.state is ModuleState.MISSING
    assert not info.exists
    assert info.tree_visible
    assert f"no iommufd.ko under {MODDIR}" in info.evidence


def test_missing_when_the_module_tree_is_not_visible(fs: FakeFilesystem) -> None:
    fs.create_file("/node/proc/sys/kernel/osrelease", contents=REL + "\n")
    fs.create_dir("/node/sys/module")
    info = inventory().info("vfio_pci")
    assert info.state is ModuleState.MISSING
    assert not info.tree_visible
    assert info.describe() == "missing (the kernel's module tree is not visible)"
    assert f"{MODDIR} not readable" in info.evidence


def test_blacklisted_in_modprobe_d(node: FakeFilesystem) -> None:
    node.create_file(
        "/node/etc/modprobe.d/no-vfio.conf",
        contents="# keep vfio away\noptions foo bar=1\nblacklist vfio-pci\n",
    )
    info = inventory().info("vfio_pci")
    assert info.state is ModuleState.BLACKLISTED
    assert info.blacklisting is not None
    assert info.blacklisting.where == "/node/etc/modprobe.d/no-vfio.conf:3"
    assert info.blacklisting.line == "blacklist vfio-pci"
    assert info.path == "kernel/drivers/vfio/pci/vfio-pci.ko.zst"


def test_install_bin_false_blacklists(node: FakeFilesystem) -> None:
    node.create_file("/node/lib/modprobe.d/vfio.conf", contents="install vfio /bin/false\n")
    info = inventory().info("vfio")
    assert info.state is ModuleState.BLACKLISTED
    assert info.blacklisting is not None
    assert info.blacklisting.how == "install"


def test_etc_file_hides_the_same_name_in_lib(node: FakeFilesystem) -> None:
    node.create_file("/node/lib/modprobe.d/vfio.conf", contents="blacklist vfio_pci\n")
    node.create_file("/node/etc/modprobe.d/vfio.conf", contents="# overridden: empty\n")
    assert inventory().info("vfio_pci").state is ModuleState.LOADABLE


def test_module_blacklist_on_the_command_line() -> None:
    found = blacklistings([], {"module_blacklist": ["e1000e,vfio-pci"]})
    assert found["vfio_pci"].where == "the kernel command line"
    assert found["vfio_pci"].line == "module_blacklist=e1000e,vfio-pci"


def test_loaded_wins_over_blacklisted(node: FakeFilesystem) -> None:
    node.create_file("/node/etc/modprobe.d/no-vfio.conf", contents="blacklist vfio_pci\n")
    node.create_file("/node/sys/module/vfio_pci/initstate", contents="live\n")
    assert inventory().info("vfio_pci").state is ModuleState.LOADED


# -- host files ---------------------------------------------------------------------------------
def test_kernel_config_falls_back_to_proc_config_gz(node: FakeFilesystem) -> None:
    text = "CONFIG_INTEL_IOMMU=y\nCONFIG_INTEL_IOMMU_DEFAULT_ON=y\n# CONFIG_IOMMUFD is not set\n"
    node.create_file("/node/proc/config.gz", contents=gzip.compress(text.encode()))
    source, config = HostFiles("/node").kernel_config()
    assert source == "/node/proc/config.gz"
    assert config["CONFIG_INTEL_IOMMU_DEFAULT_ON"] == "y"
    assert config["CONFIG_IOMMUFD"] == "n"


def test_kernel_config_prefers_boot(node: FakeFilesystem) -> None:
    node.create_file(f"/node/boot/config-{REL}", contents="CONFIG_VFIO=m\n")
    node.create_file("/node/proc/config.gz", contents=gzip.compress(b"CONFIG_VFIO=y\n"))
    assert HostFiles("/node").kernel_config() == (f"/node/boot/config-{REL}", {"CONFIG_VFIO": "m"})


def test_kernel_config_absent(node: FakeFilesystem) -> None:
    assert HostFiles("/node").kernel_config() == (None, {})


def test_cpu_vendor_and_cmdline(node: FakeFilesystem) -> None:
    node.create_file(
        "/node/proc/cpuinfo", contents="processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t: svm\n"
    )
    host = HostFiles("/node")
    assert host.cpu_vendor() == "AuthenticAMD"
    assert host.cmdline() == "ro quiet"
    assert HostFiles("/elsewhere").cpu_vendor() is None


# -- modprobe -------------------------------------------------------------------------------------
def test_chroot_command_line_for_a_mounted_host_root(node: FakeFilesystem) -> None:
    runner = Recorder()
    attempts = load_modules(HostFiles("/node"), ["vfio_pci", "vfio_iommu_type1"], runner=runner)
    assert runner.calls == [
        ["chroot", "/node", "/sbin/modprobe", "vfio_pci"],
        ["chroot", "/node", "/sbin/modprobe", "vfio_iommu_type1"],
    ]
    assert all(a.ok for a in attempts)
    assert attempts[0].describe() == "loaded vfio_pci (`chroot /node /sbin/modprobe vfio_pci`)"


def test_direct_modprobe_when_the_host_root_is_slash(fs: FakeFilesystem) -> None:
    fs.create_file("/usr/sbin/modprobe")
    runner = Recorder()
    load_modules(HostFiles("/"), ["vfio_pci"], runner=runner)
    assert runner.calls == [["/usr/sbin/modprobe", "vfio_pci"]]


def test_modprobe_command_is_a_fixed_argument_list() -> None:
    assert modprobe_command("/", "/sbin/modprobe", "vfio_pci") == ["/sbin/modprobe", "vfio_pci"]
    assert modprobe_command("/host/", "/sbin/modprobe", "vfio_pci") == [
        "chroot",
        "/host",
        "/sbin/modprobe",
        "vfio_pci",
    ]
    # a hostile name stays one argument: no shell ever sees it
    assert modprobe_command("/host", "/sbin/modprobe", "x; rm -rf /")[-1] == "x; rm -rf /"


def test_modprobe_absent_runs_nothing(node: FakeFilesystem) -> None:
    node.remove("/node/sbin/modprobe")
    runner = Recorder()
    (attempt,) = load_modules(HostFiles("/node"), ["vfio_pci"], runner=runner)
    assert runner.calls == []
    assert not attempt.ok
    assert attempt.argv == ()
    assert attempt.message.startswith("modprobe is not installed (looked in /node/sbin, ")


def test_modprobe_failure_keeps_its_message(node: FakeFilesystem) -> None:
    runner = Recorder(
        RunResult(
            1, "", f"modprobe: FATAL: Module vfio_pci not found in directory /lib/modules/{REL}\n"
        )
    )
    (attempt,) = load_modules(HostFiles("/node"), ["vfio_pci"], runner=runner)
    assert attempt.returncode == 1
    assert attempt.describe() == (
        "`chroot /node /sbin/modprobe vfio_pci` failed (exit 1): modprobe: FATAL: Module "
        f"vfio_pci not found in directory /lib/modules/{REL}"
    )


def test_nothing_to_load_runs_nothing(node: FakeFilesystem) -> None:
    runner = Recorder()
    assert load_modules(HostFiles("/node"), [], runner=runner) == []
    assert runner.calls == []


def test_load_attempt_without_argv_describes_the_reason() -> None:
    attempt = LoadAttempt("vfio", (), None, "modprobe is not installed")
    assert attempt.describe() == "vfio: modprobe is not installed"


def test_subprocess_runner_reports_an_unknown_program_without_running_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.undo()  # the real runner, but with a program that cannot exist
    result = modules.subprocess_runner(["vfio-manager-no-such-program-xyz", "arg"])
    assert result.returncode == 127
    assert "command not found" in result.stderr


def test_load_skips_what_an_earlier_modprobe_pulled_in(node: FakeFilesystem) -> None:
    runner = Recorder()
    loaded = {"vfio", "vfio_iommu_type1", "vfio_pci_core"}  # as `modprobe vfio_pci` would
    load_modules(
        HostFiles("/node"),
        ["vfio_pci", "vfio", "vfio_iommu_type1", "vfio_pci_core", "rbln_vfio_pci"],
        runner=runner,
        still_needed=lambda name: name not in loaded,
    )
    assert runner.calls == [
        ["chroot", "/node", "/sbin/modprobe", "vfio_pci"],
        ["chroot", "/node", "/sbin/modprobe", "rbln_vfio_pci"],
    ]


def test_load_stops_at_the_first_failure(node: FakeFilesystem) -> None:
    runner = Recorder(RunResult(1, "", "modprobe: ERROR: Operation not permitted\n"))
    attempts = load_modules(HostFiles("/node"), ["vfio_pci", "vfio"], runner=runner)
    assert len(runner.calls) == 1
    assert [a.ok for a in attempts] == [False]


def test_the_runner_keeps_what_the_program_says_for_the_report(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """modprobe's message is what `check` shows when a load fails, and stdout is our data: the
    runner captures both streams (a Python one-liner stands in for modprobe)."""
    say = "import sys; print('out'); sys.stderr.write('modprobe: ERROR: x'); sys.exit(1)"
    assert REAL_RUNNER([sys.executable, "-c", say]) == RunResult(1, "out\n", "modprobe: ERROR: x")
    assert capfd.readouterr() == ("", "")

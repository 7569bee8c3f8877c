"""Session setup of the e2e suite. Runs ONLY inside the QEMU guest of tools/e2e/run.

Boots: tools/e2e/run passes --e2e-boot=on (IOMMU enabled: every test not marked iommu_off)
or --e2e-boot=off (intel_iommu=off: only the tests marked iommu_off).
Kernels: --e2e-kernel=debian or iommufd. Tests marked iommufd need a kernel built with
CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV: skipped, with the reason, on a kernel whose config
says it lacks them; the iommufd kernel's boot stops with an error if its config lacks them.
Tests marked sriov need the igb PF: skipped, with the reason, when the run's QEMU had no igb.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Optional

import guest
import pytest

GUEST_FILE = "/etc/vfio-manager-e2e-guest"

Baseline = dict[str, Optional[str]]  # each managed function's driver at boot


def _cmdline() -> str:
    with open("/proc/cmdline") as f:
        return f.read().strip()


def _in_guest() -> bool:
    try:
        with open("/proc/cmdline") as f:
            cmdline = f.read().split()
    except OSError:
        return False
    return "vfio_e2e.guest=1" in cmdline and os.path.exists(GUEST_FILE)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vfio-e2e")
    group.addoption(
        "--e2e-boot",
        choices=["on", "off"],
        default=None,
        help="which boot this is: on (IOMMU enabled) or off (intel_iommu=off); "
        "default: whatever /sys/kernel/iommu_groups says",
    )
    group.addoption(
        "--e2e-kernel",
        choices=["debian", "iommufd"],
        default=None,
        help="which kernel this is: debian (stock) or iommufd (tools/e2e/build-kernel); "
        "default: whatever the kernel config says",
    )
    group.addoption(
        "--e2e-out", default=None, help="folder (on the out share) that receives the recordings"
    )


def pytest_configure(config: pytest.Config) -> None:
    if not _in_guest():
        # These tests write to /sys. Never run them against a real machine.
        pytest.exit(
            "tests/e2e runs only inside the QEMU guest started by tools/e2e/run "
            "(no vfio_e2e.guest=1 in /proc/cmdline or no " + GUEST_FILE + ")",
            returncode=4,
        )
    config.addinivalue_line("markers", "iommu_off: runs only in the boot with intel_iommu=off")
    config.addinivalue_line("markers", "e2e: runs only inside the QEMU guest")
    config.addinivalue_line(
        "markers", "iommufd: needs CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV (--kernel iommufd)"
    )
    config.addinivalue_line("markers", "sriov: needs the igb SR-IOV PF (QEMU with igb)")
    config.addinivalue_line(
        "markers", "both_kernels: a kernel fact worth showing on 6.12 too (CI's iommufd lane)"
    )
    missing = guest.cdev_config_missing()
    if config.getoption("--e2e-kernel") == "iommufd" and missing:
        pytest.exit(
            f"this boot was meant to run the iommufd kernel, but kernel {os.uname().release} "
            f"has {', '.join(missing)} unset (or no /boot/config-{os.uname().release})",
            returncode=3,
        )
    config._e2e_cdev_missing = missing  # type: ignore[attr-defined]
    actual = "on" if guest.iommu_on() else "off"
    wanted = config.getoption("--e2e-boot") or actual
    if wanted != actual:
        pytest.exit(
            f"this boot was meant to have the IOMMU {wanted}, but the kernel has it {actual} "
            f"(cmdline: {_cmdline()})",
            returncode=3,
        )
    config._e2e_boot = actual  # type: ignore[attr-defined]
    guest.install_write_audit()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    boot = config._e2e_boot  # type: ignore[attr-defined]
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    missing = config._e2e_cdev_missing  # type: ignore[attr-defined]
    no_cdev = pytest.mark.skip(
        reason=f"kernel {os.uname().release} built without {' and '.join(missing)}: "
        "these run with tools/e2e/run --kernel iommufd"
    )
    no_igb = pytest.mark.skip(reason="no igb SR-IOV PF: the run's QEMU has no igb (QEMU 8.0 on)")
    igb = "vfio_e2e.igb=0" not in _cmdline().split()
    for item in items:
        item.add_marker(pytest.mark.e2e)
        if missing and item.get_closest_marker("iommufd") is not None:
            item.add_marker(no_cdev)
        if not igb and item.get_closest_marker("sriov") is not None:
            item.add_marker(no_igb)
        off_test = item.get_closest_marker("iommu_off") is not None
        (keep if off_test == (boot == "off") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    # the recordings first: their "before" is then the pristine boot state (a function that
    # was ever bound loses its waiting_for_supplier entry; a bridge re-probed by shpchp keeps
    # a higher enable count), which is what the replays should start from
    keep.sort(key=lambda item: item.path.name != "test_recorded.py")
    items[:] = keep


def pytest_report_header(config: pytest.Config) -> list[str]:
    import platform

    missing = config._e2e_cdev_missing  # type: ignore[attr-defined]
    cdev = "no: " + ", ".join(missing) + " unset" if missing else "yes"
    return [
        f"e2e guest: kernel {platform.release()}, IOMMU {config._e2e_boot}",  # type: ignore[attr-defined]
        f"iommufd + VFIO device cdev: {cdev}",
        "cmdline: " + _cmdline(),
    ]


@pytest.fixture(scope="session")
def baseline() -> Baseline:
    """Load vfio-pci (as an admin would) and note each managed function's boot driver."""
    guest.load_vfio()
    return {bdf: guest.driver(bdf) for bdf in guest.MANAGED}


@pytest.fixture(autouse=True)
def _clean_guest(baseline: dict[str, Optional[str]]) -> Iterator[None]:
    """Each test starts from the boot state and the shares stay on virtio-pci whatever happens."""
    fixed = guest.restore(baseline)
    assert not fixed, f"a previous test left residue that the harness had to undo: {fixed}"
    yield
    for bdf in guest.SHARES:
        assert guest.driver(bdf) == "virtio-pci", f"share function {bdf} lost its driver"
    guest.restore(baseline)
    if not guest.vfio_loaded():  # a test unloaded the modules and did not get to load them
        guest.load_vfio()
    now = guest.state(list(baseline))
    assert now == {b: (d, None) for b, d in baseline.items()}, (
        f"could not restore the boot state: {now}"
    )


@pytest.fixture(scope="session")
def out_dir(request: pytest.FixtureRequest) -> Optional[str]:
    value = request.config.getoption("--e2e-out")
    return str(value) if value else None

"""Session setup of the e2e suite. Runs ONLY inside the QEMU guest of tools/e2e/run."""

from __future__ import annotations

import os

import pytest

GUEST_FILE = "/etc/vfio-manager-e2e-guest"


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
        help="which boot this is: on (IOMMU enabled) or off (intel_iommu=off)",
    )
    group.addoption("--e2e-out", default=None, help="folder (on the out share) for recordings")


def pytest_configure(config: pytest.Config) -> None:
    if not _in_guest():
        # These tests write to /sys. Never run them against a real machine.
        pytest.exit(
            "tests/e2e runs only inside the QEMU guest started by tools/e2e/run "
            "(no vfio_e2e.guest=1 in /proc/cmdline or no " + GUEST_FILE + ")",
            returncode=4,
        )

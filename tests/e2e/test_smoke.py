"""The guest is what the suite expects: a real kernel with the emulated functions."""

import os
import subprocess
import sys


def test_iommu_groups_present():
    assert os.listdir("/sys/kernel/iommu_groups")


def test_package_help():
    r = subprocess.run(
        [sys.executable, "-m", "vfio_manager", "--help"],
        check=False,
        capture_output=True,
        text=True,
    )
    print(r.stdout, r.stderr)

"""The iommufd device interface on the iommufd kernel (tools/e2e/run --kernel iommufd).

Harness writes only (no tool): what a kernel with CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV
shows, the ground the tool's cdev handling stands on (docs/kernel-facts.md, "iommufd and the
VFIO device cdev"). Marked iommufd: on a kernel whose config lacks either option these are
skipped with the reason; the iommufd kernel's boot refuses to start without them
(conftest.py). The ioctl numbers are in guest.py, derived there from the 6.12 headers.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys

import guest
import pytest
from conftest import Baseline
from guest import E1000E, PCI

pytestmark = pytest.mark.iommufd


def _fd_targets(pid: int) -> list[str]:
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return targets


def test_kernel_has_iommufd_and_the_cdev_config(baseline: Baseline) -> None:
    config = guest.kernel_config()
    assert config.get("CONFIG_IOMMUFD") in ("y", "m")
    assert config.get("CONFIG_VFIO_DEVICE_CDEV") == "y"
    assert config.get("CONFIG_VFIO_CONTAINER") == "y", "the legacy group API stays"
    assert stat.S_ISCHR(os.stat("/dev/iommu").st_mode)
    assert stat.S_ISCHR(os.stat("/dev/vfio/vfio").st_mode)


def test_a_function_on_vfio_pci_gets_its_cdev(baseline: Baseline) -> None:
    assert guest.vfio_cdev(E1000E) is None
    guest.move_to_vfio(E1000E)
    names = os.listdir(f"{PCI}/{E1000E}/vfio-dev")
    assert len(names) == 1, names
    assert names[0].startswith("vfio"), names
    cdev = f"/dev/vfio/devices/{names[0]}"
    st = os.stat(cdev)
    assert stat.S_ISCHR(st.st_mode)
    with open(f"{PCI}/{E1000E}/vfio-dev/{names[0]}/dev") as f:
        assert f.read().strip() == f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    assert guest.vfio_cdev(E1000E) == cdev
    assert guest.vfio_dev(E1000E) is not None, "the group node exists beside the cdev"
    guest.restore(baseline)
    assert not os.path.exists(cdev)
    assert not os.path.exists(f"{PCI}/{E1000E}/vfio-dev")


def test_a_process_binds_the_cdev_to_an_iommufd(baseline: Baseline) -> None:
    guest.move_to_vfio(E1000E)
    cdev = guest.vfio_cdev(E1000E)
    assert cdev is not None
    holder = guest.start_holder(guest.CDEV_HOLDER, cdev)
    try:
        targets = _fd_targets(holder.pid)
        assert cdev in targets, targets
        assert "/dev/iommu" in targets, targets
        assert not any(t.startswith("/dev/vfio/") and t != cdev for t in targets), targets
        # while the cdev is bound, the same device through its group is refused
        code = guest.VFIO_HOLD + "\nhold(sys.argv[1], sys.argv[2])\n"
        r = subprocess.run(
            [sys.executable, "-c", code, E1000E, str(guest.group(E1000E))],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert r.returncode != 0, r.stdout
        assert f"[Errno {errno.EBUSY}]" in r.stderr, r.stderr
    finally:
        holder.kill()
        holder.wait()

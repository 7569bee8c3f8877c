"""The machine's SR-IOV device: QEMU's igb (82576) at 04:00.0 on the guest's igb driver.

Harness writes only (no tool): what the kernel does when VFs are created and removed, the
ground the VF provisioning stands on (docs/kernel-facts.md, K17 and "SR-IOV on a real
kernel"). The guest has no udev, so nothing loads igbvf when VFs appear: the test loads it
first, as udev would have. The facts seen (VF addresses, IOMMU groups, timings) are printed
and written to the boot's out folder as sriov-facts.json.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterator
from typing import Any, Optional

import guest
import pytest
from conftest import Baseline
from guest import IGB, PCI

pytestmark = pytest.mark.sriov

NUMVFS = f"{PCI}/{IGB}/sriov_numvfs"
AUTOPROBE = f"{PCI}/{IGB}/sriov_drivers_autoprobe"
COUNT = 2  # VFs created per step: enough to see their addresses and groups


def _errno_of(path: str, data: str) -> int:
    try:
        guest.write(path, data)
    except OSError as e:
        return e.errno or -1
    return 0


def _timed_write(path: str, data: str) -> float:
    started = time.monotonic()
    guest.write(path, data)
    return round(time.monotonic() - started, 3)


@pytest.fixture
def facts(out_dir: Optional[str]) -> Iterator[dict[str, Any]]:
    seen: dict[str, Any] = {"kernel": os.uname().release}
    yield seen
    print(json.dumps(seen, indent=1))
    if out_dir:
        with open(os.path.join(out_dir, "sriov-facts.json"), "w") as f:
            json.dump(seen, f, indent=1)


def test_igb_pf_creates_and_removes_vfs(baseline: Baseline, facts: dict[str, Any]) -> None:
    assert (guest.attr(IGB, "vendor"), guest.attr(IGB, "device")) == ("0x8086", "0x10c9")
    assert guest.driver(IGB) == "igb"
    total = int(guest.attr(IGB, "sriov_totalvfs"))
    assert total > 0
    assert guest.attr(IGB, "sriov_numvfs") == "0"
    assert guest.attr(IGB, "sriov_drivers_autoprobe") == "1"
    facts["pf"] = {
        name: guest.attr(IGB, name)
        for name in ("sriov_totalvfs", "sriov_offset", "sriov_stride", "sriov_vf_device")
    }
    facts["pf"]["iommu_group"] = guest.group(IGB)
    facts["pf"]["group_members"] = guest.group_members(IGB)
    guest.modprobe("igbvf")  # no udev: load the VF driver as udev would on the VFs' uevents
    try:
        # autoprobe on: the VFs appear with the write and igbvf takes them
        facts["create_s"] = _timed_write(NUMVFS, str(COUNT))
        vfs = guest.vfs(IGB)
        assert len(vfs) == COUNT
        assert guest.attr(IGB, "sriov_numvfs") == str(COUNT)
        facts["vfs"] = {
            vf: {
                "device": guest.attr(vf, "device"),
                "physfn": os.path.basename(os.readlink(f"{PCI}/{vf}/physfn")),
                "driver_after_write": guest.driver(vf),
                "iommu_group": guest.group(vf),
                "group_members": guest.group_members(vf),
            }
            for vf in vfs
        }
        for vf in vfs:
            assert facts["vfs"][vf]["physfn"] == IGB
            # sriov_vf_device is hex without the 0x that the VF's own device file has
            assert facts["vfs"][vf]["device"] == "0x" + guest.attr(IGB, "sriov_vf_device")
        guest.wait_for(lambda: all(guest.driver(vf) == "igbvf" for vf in vfs), what="igbvf")
        # another non-zero count while VFs exist: the kernel wants 0 first
        facts["numvfs_change_errno"] = errno.errorcode.get(_errno_of(NUMVFS, "1"), "0")
        assert facts["numvfs_change_errno"] == "EBUSY"
        facts["over_total_errno"] = errno.errorcode.get(_errno_of(NUMVFS, str(total + 1)), "0")
        facts["remove_s"] = _timed_write(NUMVFS, "0")
        assert guest.vfs(IGB) == []
        assert not any(os.path.exists(f"{PCI}/{vf}") for vf in vfs)

        # autoprobe off: the VFs appear with no driver although igbvf is loaded
        guest.write(AUTOPROBE, "0")
        facts["create_noautoprobe_s"] = _timed_write(NUMVFS, str(COUNT))
        vfs = guest.vfs(IGB)
        assert len(vfs) == COUNT
        time.sleep(0.5)  # a late probe would show by now
        facts["drivers_with_autoprobe_0"] = {vf: guest.driver(vf) for vf in vfs}
        assert all(guest.driver(vf) is None for vf in vfs)
        # such a VF goes to vfio-pci by the careful order; its group gets its node
        guest.move_to_vfio(vfs[0])
        facts["vf_on_vfio"] = {
            "bdf": vfs[0],
            "dev_vfio": guest.vfio_dev(vfs[0]),
            "cdev": guest.vfio_cdev(vfs[0]),
        }
        assert guest.vfio_dev(vfs[0]) is not None
        guest.write(f"{PCI}/{vfs[0]}/driver_override", "\n")
        guest.write(f"{PCI}/{vfs[0]}/driver/unbind", vfs[0])
        facts["remove_noautoprobe_s"] = _timed_write(NUMVFS, "0")
        assert guest.vfs(IGB) == []
    finally:
        if guest.attr(IGB, "sriov_numvfs") != "0":
            guest.write(NUMVFS, "0")
        guest.write(AUTOPROBE, "1")
        guest.modprobe("-r", "igbvf")
    assert guest.driver(IGB) == "igb"

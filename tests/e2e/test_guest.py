"""The guest is what the other tests assume: a real kernel, the emulated functions, vfio-pci."""

import os
import stat
import subprocess
import sys

import guest
from conftest import Baseline


def test_emulated_topology_as_expected() -> None:
    ids = {b: (guest.attr(b, "vendor"), guest.attr(b, "device")) for b in guest.functions()}
    assert ids[guest.E1000E] == ("0x8086", "0x10d3")
    assert ids[guest.E1000] == ("0x8086", "0x100e")
    assert ids[guest.VIRTIO_NET] == ("0x1af4", "0x1000")
    assert ids[guest.EDU] == ids[guest.EDU_BEHIND_BRIDGE] == ("0x1234", "0x11e8")
    for share in guest.SHARES:
        assert ids[share] == ("0x1af4", "0x1009")
        assert guest.driver(share) == "virtio-pci"
    assert guest.driver(guest.E1000E) == "e1000e"
    assert guest.driver(guest.E1000) == "e1000"
    assert guest.driver(guest.VIRTIO_NET) == "virtio-pci"
    assert guest.driver(guest.EDU) is None
    assert guest.driver(guest.BRIDGE) == "shpchp"


def test_iommu_groups_as_expected() -> None:
    assert guest.iommu_on()
    assert guest.group_members(guest.E1000E) == [guest.E1000E]
    assert guest.group_members(guest.EDU) == [guest.EDU]
    assert guest.group_members(guest.E1000) == [guest.E1000, guest.VIRTIO_NET]
    assert guest.group_members(guest.EDU_BEHIND_BRIDGE) == [
        guest.BRIDGE,
        guest.TESTDEV,
        guest.EDU_BEHIND_BRIDGE,
    ]


def test_vfio_loaded(baseline: Baseline) -> None:
    assert os.path.isdir("/sys/bus/pci/drivers/vfio-pci")
    assert stat.S_ISCHR(os.stat("/dev/vfio/vfio").st_mode)


def test_cli_runs_as_a_module() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "vfio_manager", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    for command in ("status", "bind", "unbind", "bind-all", "unbind-all"):
        assert command in r.stdout

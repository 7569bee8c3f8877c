"""The kernel behaviour the tool is built on (docs/kernel-facts.md),
checked on the real 6.1 kernel with harness writes (not the tool's). When one of these
fails on a new kernel, the tool's assumptions need a look before its own tests do.
"""

import errno
import os
from typing import Optional

import guest
import pytest
from conftest import Baseline
from guest import BRIDGE, EDU, PCI

OVERRIDE = f"{PCI}/{EDU}/driver_override"


def _write(path: str, data: bytes) -> int:
    fd = os.open(path, os.O_WRONLY)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def _errno_of(path: str, data: bytes) -> Optional[int]:
    try:
        _write(path, data)
    except OSError as e:
        return e.errno
    return 0


def test_override_cleared_by_newline_not_by_empty_write(baseline: Baseline) -> None:
    _write(OVERRIDE, b"vfio-pci")
    assert guest.override(EDU) == "vfio-pci"
    _write(OVERRIDE, b"")  # a 0-byte write never reaches the kernel
    assert guest.override(EDU) == "vfio-pci"
    _write(OVERRIDE, b"\n")
    assert guest.override(EDU) is None


def test_override_value_cut_at_newline(baseline: Baseline) -> None:
    _write(OVERRIDE, b"vfio-pci\n")
    assert guest.override(EDU) == "vfio-pci"


def test_override_nul_clears_on_this_kernel(baseline: Baseline) -> None:
    _write(OVERRIDE, b"vfio-pci")
    _write(OVERRIDE, b"\0")
    assert guest.override(EDU) is None


def test_module_name_as_override_leaves_function_driverless(baseline: Baseline) -> None:
    _write(OVERRIDE, b"vfio_pci")
    assert _errno_of("/sys/bus/pci/drivers_probe", EDU.encode()) == 0  # "success"
    assert guest.driver(EDU) is None


def test_careful_order_binds_and_node_appears_at_once(baseline: Baseline) -> None:
    _write(OVERRIDE, b"vfio-pci")
    _write("/sys/bus/pci/drivers_probe", EDU.encode())
    assert guest.driver(EDU) == "vfio-pci"
    assert os.path.exists(f"/dev/vfio/{guest.group(EDU)}")  # devtmpfs: no wait was needed here
    assert os.listdir(f"{PCI}/{EDU}/vfio-dev")[0].startswith("vfio")


def test_bind_file_errnos(baseline: Baseline) -> None:
    bind = "/sys/bus/pci/drivers/vfio-pci/bind"
    _write(OVERRIDE, b"pci-stub")
    assert _errno_of(bind, EDU.encode()) == errno.ENODEV  # override names another driver
    _write(OVERRIDE, b"vfio-pci")
    assert _errno_of(bind, EDU.encode()) == 0
    assert guest.driver(EDU) == "vfio-pci"
    assert _errno_of(bind, EDU.encode()) == errno.EBUSY  # already bound


def test_vfio_pci_refuses_a_bridge_and_drivers_probe_hides_it(baseline: Baseline) -> None:
    assert guest.driver(BRIDGE) == "shpchp"
    _write(f"{PCI}/{BRIDGE}/driver_override", b"vfio-pci")
    _write(f"{PCI}/{BRIDGE}/driver/unbind", BRIDGE.encode())
    assert _errno_of("/sys/bus/pci/drivers/vfio-pci/bind", BRIDGE.encode()) == errno.EINVAL
    assert _errno_of("/sys/bus/pci/drivers_probe", BRIDGE.encode()) == 0
    assert guest.driver(BRIDGE) is None


@pytest.mark.iommu_off
def test_without_iommu_vfio_pci_probe_fails_and_drivers_probe_hides_it(baseline: Baseline) -> None:
    e1000e = guest.E1000E
    _write(f"{PCI}/{e1000e}/driver_override", b"vfio-pci")
    _write(f"{PCI}/{e1000e}/driver/unbind", e1000e.encode())
    assert _errno_of("/sys/bus/pci/drivers/vfio-pci/bind", e1000e.encode()) == errno.EINVAL
    assert _errno_of("/sys/bus/pci/drivers_probe", e1000e.encode()) == 0
    assert guest.driver(e1000e) is None

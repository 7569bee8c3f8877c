"""Plain os.open/os.write on the fake paths, as the product does (O_WRONLY|O_TRUNC, one write)."""

from __future__ import annotations

import os
from typing import Optional

from tests.harness import FakeKernel


def write(k: FakeKernel, rel: str, data: str | bytes) -> None:
    """One unbuffered write to sys_root/REL; the kernel's errno comes back as OSError."""
    payload = data.encode() if isinstance(data, str) else data
    fd = os.open(f"{k.sys_root}/{rel}", os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, payload)
    finally:
        os.close(fd)


def write_errno(k: FakeKernel, rel: str, data: str | bytes) -> Optional[int]:
    """Like :func:`write`, but returns the errno (``None`` on success)."""
    try:
        write(k, rel, data)
    except OSError as exc:
        return exc.errno
    return None


def read(k: FakeKernel, rel: str) -> str:
    """What ``cat sys_root/REL`` shows (a fresh open each time, as the product reads)."""
    fd = os.open(f"{k.sys_root}/{rel}", os.O_RDONLY)
    try:
        return os.read(fd, 65536).decode()
    finally:
        os.close(fd)


def dev(bdf: str, attr: str) -> str:
    return f"bus/pci/devices/{bdf}/{attr}"


def drv(name: str, attr: str) -> str:
    return f"bus/pci/drivers/{name}/{attr}"


def add_simple(k: FakeKernel) -> tuple[str, str]:
    """A NIC on e1000e (group 1) and an unbound edu-like function (group 2), vfio-pci loaded."""
    k.add_driver("e1000e", module="e1000e", ids=[(0x8086, 0x10D3)])
    k.add_driver("vfio-pci", module="vfio_pci", vfio=True)
    k.add_function(
        "0000:03:00.0",
        vendor=0x8086,
        device=0x10D3,
        pci_class=0x020000,
        driver="e1000e",
        iommu_group=1,
    )
    k.add_function("0000:00:04.0", vendor=0x1234, device=0x11E8, pci_class=0x00FF00, iommu_group=2)
    return "0000:03:00.0", "0000:00:04.0"

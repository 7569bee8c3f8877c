"""Ready-made machines for the product's tests.

:func:`npu_node` builds a host with Rebellions NPUs behind PCIe root ports, each in its own
IOMMU group, plus functions the product must leave alone: a host bridge, a NIC on e1000e and
an NVMe disk controller, each in its own group.
"""

from __future__ import annotations

from typing import Optional

from tests.harness.fakekernel import FakeKernel

REBELLIONS_VENDOR = 0x1EFF
NPU_CLASS = 0x120000
# RBLN-CA02 CA11 CA12 CA15 CA21 CA22 CA25 CR03 CR13 (as in vfio_manager/kernel/catalogue.py)
REBELLIONS_PF_IDS = (0x1020, 0x1110, 0x1120, 0x1150, 0x1210, 0x1220, 0x1250, 0x2030, 0x2130)
REBELLIONS_VF_IDS = (0x1021, 0x1111, 0x1121, 0x1211, 0x1221, 0x1251, 0x2031, 0x2131)

HOST_BRIDGE = "0000:00:00.0"
HOST_NIC = "0000:00:19.0"  # 8086:10d3, class 0x020000, e1000e
DISK_ROOT_PORT = "0000:00:1d.0"
HOST_DISK = "0000:70:00.0"  # 144d:a808, class 0x010802, nvme
ROOT_PORT_ID = (0x8086, 0x7C70)  # the NPUs' root ports, class 0x060400, pcieport


def npu_node(
    k: FakeKernel,
    count: int = 2,
    device: int = 0x1220,
    driver: Optional[str] = "rebellions",
    vfio_loaded: bool = True,
    shared_group: bool = False,
) -> list[str]:
    """Add ``count`` NPUs (0000:01:00.0, 0000:02:00.0, ...) and their host; return their BDFs.

    ``driver``: ``"rebellions"`` (native), ``None`` (unbound) or ``"vfio-pci"`` (bound, with
    the override set, as the product leaves them; needs ``vfio_loaded``).
    ``vfio_loaded=False``: the vfio modules are on disk (modules.dep, modules.alias) but not
    loaded: no vfio-pci driver, no /dev/vfio until ``k.load_module("vfio_pci")``.
    ``shared_group=True``: all NPUs share one IOMMU group (a switch without ACS).
    Groups: 0 host bridge, 1 NIC, 2 disk root port, 3 disk; then per NPU its root port and
    itself (or one shared NPU group after all root ports).
    """
    if not 0 <= count <= 0x40:
        raise ValueError("count must be between 0 and 64")
    if driver == "vfio-pci" and not vfio_loaded:
        raise ValueError("driver='vfio-pci' needs vfio_loaded=True")
    if "pcieport" not in k.drivers():
        k.add_driver("pcieport", classes=[(0x060400, 0xFFFF00)], dma_safe=True)
    if "rebellions" not in k.drivers():
        k.add_driver(
            "rebellions",
            module="rebellions",
            ids=[(REBELLIONS_VENDOR, d) for d in REBELLIONS_PF_IDS + REBELLIONS_VF_IDS],
        )
    if "e1000e" not in k.drivers():
        k.add_driver("e1000e", module="e1000e", ids=[(0x8086, 0x10D3)])
    if "nvme" not in k.drivers():
        k.add_driver("nvme", module="nvme", classes=[(0x010802, 0xFFFFFF)])
    k.add_vfio_modules(loaded=vfio_loaded)

    k.add_function(
        HOST_BRIDGE,
        vendor=0x8086,
        device=0x29C0,
        pci_class=0x060000,
        subsystem_vendor=0x8086,
        subsystem_device=0x7270,
        iommu_group=0,
        numa_node=0,
    )
    k.add_function(
        HOST_NIC,
        vendor=0x8086,
        device=0x10D3,
        pci_class=0x020000,
        subsystem_vendor=0x8086,
        subsystem_device=0xA01F,
        driver="e1000e",
        iommu_group=1,
        numa_node=0,
    )
    k.add_function(
        DISK_ROOT_PORT,
        vendor=0x8086,
        device=0x7C72,
        pci_class=0x060400,
        driver="pcieport",
        iommu_group=2,
        numa_node=0,
    )
    k.add_function(
        HOST_DISK,
        vendor=0x144D,
        device=0xA808,
        pci_class=0x010802,
        subsystem_vendor=0x144D,
        subsystem_device=0xA801,
        driver="nvme",
        iommu_group=3,
        parent=DISK_ROOT_PORT,
        numa_node=0,
    )

    bdfs: list[str] = []
    shared = 4 + count
    for index in range(count):
        # root ports at 00:02.0..00:18.0, then on a second root bus 0000:80
        port = (
            f"0000:00:{0x02 + index:02x}.0"
            if index < 0x17
            else f"0000:80:{0x02 + index - 0x17:02x}.0"
        )
        bdf = f"0000:{index + 1:02x}:00.0"
        port_group = 4 + index if shared_group else 4 + 2 * index
        npu_group = shared if shared_group else 5 + 2 * index
        k.add_function(
            port,
            vendor=ROOT_PORT_ID[0],
            device=ROOT_PORT_ID[1],
            pci_class=0x060400,
            driver="pcieport",
            iommu_group=port_group,
            numa_node=index % 2,
        )
        k.add_function(
            bdf,
            vendor=REBELLIONS_VENDOR,
            device=device,
            pci_class=NPU_CLASS,
            subsystem_vendor=REBELLIONS_VENDOR,
            subsystem_device=device,
            revision=0x01,
            iommu_group=npu_group,
            parent=port,
            numa_node=index % 2,
            driver_override="vfio-pci" if driver == "vfio-pci" else None,
            driver=driver,
        )
        bdfs.append(bdf)
    return bdfs


def ca25_pf(k: FakeKernel, bdf: str, *, iommu_group: int) -> str:
    """An RBLN-CA25 SR-IOV PF on rebellions (which :func:`npu_node` registers) with no VFs
    yet, able to carry 4 (device 0x1251, :meth:`FakeKernel.add_vfs`)."""
    k.add_function(
        bdf,
        vendor=0x1EFF,
        device=0x1250,
        pci_class=0x120000,
        driver="rebellions",
        iommu_group=iommu_group,
        sriov_totalvfs=4,
    )
    return bdf

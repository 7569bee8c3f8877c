"""What the fake kernel remembers: functions, drivers, modules, and what a test observes.

Plain data. The rules that change it live in the modules next to this one, one per kernel
file (see ``tests/harness/kernel/__init__.py``); this module knows no file system.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

from tests.harness.pci import PCI_ANY_ID, modalias


class Write(NamedTuple):
    """One write the product made to a kernel file.

    ``path`` is relative to ``sys_root`` and canonical: device attributes as
    ``bus/pci/devices/BDF/ATTR`` whichever path was opened, driver files as
    ``bus/pci/drivers/NAME/FILE``, bus files as ``bus/pci/drivers_probe``. ``data`` is what
    the kernel received (decoded), ``error`` the errno the write returned, ``None`` on success.
    """

    path: str
    data: str
    error: Optional[int]


class UnbindGate(threading.Event):
    """Returned by ``FakeKernel.block_unbind``: ``set()`` lets the blocked unbind finish.

    ``entered`` is set when the writer's thread has reached the kernel and is blocked, so a
    test can wait for it (with a timeout) instead of sleeping.
    """

    def __init__(self, bdf: str) -> None:
        super().__init__()
        self.bdf = bdf
        self.entered = threading.Event()


class UnknownModuleError(LookupError):
    """``load_module`` of a module that is neither declared nor built in (modprobe: not found)."""


class ModuleInUseError(RuntimeError):
    """``unload_module`` of a module other loaded modules depend on (rmmod: in use)."""


@dataclass
class DynId:
    """An entry added through drivers/NAME/new_id (struct pci_device_id, dynamic)."""

    vendor: int
    device: int
    subvendor: int = PCI_ANY_ID
    subdevice: int = PCI_ANY_ID
    pci_class: int = 0
    class_mask: int = 0

    def matches(self, fn: Function) -> bool:
        return (
            self.vendor in (PCI_ANY_ID, fn.vendor)
            and self.device in (PCI_ANY_ID, fn.device)
            and self.subvendor in (PCI_ANY_ID, fn.subsystem_vendor)
            and self.subdevice in (PCI_ANY_ID, fn.subsystem_device)
            and not ((self.pci_class ^ fn.pci_class) & self.class_mask)
        )


@dataclass
class DriverSpec:
    """What a module registers when it loads."""

    name: str
    ids: tuple[tuple[int, int], ...] = ()
    classes: tuple[tuple[int, int], ...] = ()
    vfio: bool = False
    dma_safe: bool = False


@dataclass
class Driver:
    """A registered PCI driver (bus/pci/drivers/NAME)."""

    name: str
    module: Optional[str]
    ids: list[tuple[int, int]]
    classes: list[tuple[int, int]]
    vfio: bool
    dma_safe: bool  # leaves DMA to its user (driver_managed_dma): kernel-facts K16
    dyn_ids: list[DynId] = field(default_factory=list)

    @property
    def sriov_configure(self) -> bool:
        # DOUBT: vfio-pci has sriov_configure only with enable_sriov=Y; native drivers are
        # assumed to implement it.
        return not self.vfio


@dataclass
class Module:
    """A kernel module, on disk and possibly loaded (or built in)."""

    name: str
    path: str  # relative to /lib/modules/<release>
    builtin: bool = False
    deps: list[str] = field(default_factory=list)  # direct dependencies, modprobe load order
    softdep_post: list[str] = field(default_factory=list)
    drivers: list[DriverSpec] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    size: int = 16384
    address: int = 0
    base_refs: int = 0
    loaded: bool = False
    load_seq: int = 0


@dataclass
class Function:
    """A PCI function (bus/pci/devices/BDF)."""

    bdf: str
    vendor: int
    device: int
    pci_class: int
    subsystem_vendor: int
    subsystem_device: int
    revision: int
    numa_node: int
    header_type: int
    group: Optional[int]
    path: str  # sys-relative real path: devices/pci0000:00/0000:00:07.0/0000:03:00.0
    parent: Optional[str]
    driver: Optional[str] = None
    override: Optional[str] = None
    sriov_totalvfs: Optional[int] = None
    sriov_vf_device: int = 0
    sriov_offset: int = 1
    sriov_stride: int = 1
    sriov_autoprobe: bool = True
    vfs: list[str] = field(default_factory=list)
    physfn: Optional[str] = None
    vfio_index: Optional[int] = None
    pm: bool = True  # has a PM capability: vfio-pci puts it in D3hot while idle
    power_state: str = "D0"
    driver_children: dict[str, list[str]] = field(default_factory=dict)
    waiting_for_supplier: bool = False
    noiommu_group: bool = False  # its group was made by vfio's no-IOMMU mode
    user_open: bool = False  # a user has its VFIO device fd open (K26)
    responding: bool = True  # False: its config space reads all-ones (K27)

    @property
    def depth(self) -> int:
        """How many ``..`` lead from this function's directory to sys_root."""
        return self.path.count("/") + 1

    @property
    def modalias(self) -> str:
        return modalias(
            self.vendor, self.device, self.subsystem_vendor, self.subsystem_device, self.pci_class
        )


# Entries a bound driver creates in its device's directory and takes away on unbind (seen in
# the q35 snapshots: e1000e's net/ptp/msi_irqs vanish when it moves to vfio-pci), kernel-facts K19
DRIVER_CHILD_RE = re.compile(
    r"^(net|ptp|msi_irqs|virtio\d+|drm|graphics|sound|nvme|host\d+|ata\d+|hwmon|infiniband"
    r"|rbln\d+|[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]:pcie\d+)$"
)

VFIO_FAMILY: tuple[Module, ...] = (
    # Debian 6.1 (linux-image-amd64): names, paths, sizes and holders as in q35-vfio-loaded.json
    Module("vfio", "kernel/drivers/vfio/vfio.ko", size=49152, softdep_post=["vfio_iommu_type1"]),
    Module(
        "vfio_iommu_type1",
        "kernel/drivers/vfio/vfio_iommu_type1.ko",
        size=45056,
        deps=["vfio"],
        params={
            "allow_unsafe_interrupts": "N",
            "disable_hugepages": "N",
            "dma_entry_limit": "65535",
        },
    ),
    Module("vfio_virqfd", "kernel/drivers/vfio/vfio_virqfd.ko", size=16384),
    Module("irqbypass", "kernel/virt/lib/irqbypass.ko", size=16384),
    Module(
        "vfio_pci_core",
        "kernel/drivers/vfio/pci/vfio-pci-core.ko",
        size=73728,
        deps=["vfio", "vfio_virqfd", "irqbypass"],
    ),
    Module(
        "vfio_pci",
        "kernel/drivers/vfio/pci/vfio-pci.ko",
        size=16384,
        deps=["vfio_pci_core", "vfio"],
        drivers=[DriverSpec("vfio-pci", vfio=True, dma_safe=True)],
        params={
            "disable_denylist": "N",
            "disable_idle_d3": "N",
            "disable_vga": "N",
            "enable_sriov": "N",
            "nointxmask": "N",
        },
    ),
)

DEFAULT_KERNEL_CONFIG: dict[str, str] = {
    # what Debian 12's 6.1 kernel has; "n" is written as "# CONFIG_X is not set"
    "CONFIG_MODULES": "y",
    "CONFIG_IOMMU_SUPPORT": "y",
    "CONFIG_INTEL_IOMMU": "y",
    "CONFIG_INTEL_IOMMU_DEFAULT_ON": "n",
    "CONFIG_AMD_IOMMU": "y",
    "CONFIG_VFIO": "m",
    "CONFIG_VFIO_PCI": "m",
    "CONFIG_VFIO_PCI_CORE": "m",
    "CONFIG_VFIO_IOMMU_TYPE1": "m",
    "CONFIG_VFIO_NOIOMMU": "n",  # q35 snapshots: /sys/module/vfio has no parameters
    "CONFIG_IOMMUFD": "n",
}

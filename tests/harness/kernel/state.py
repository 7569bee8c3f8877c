"""The fake kernel's memory: configuration, the model tables, the file tree, the fault plan.

Every rule module is a set of functions over a :class:`KernelState`; ``FakeKernel`` (the
facade in tests/harness/fakekernel.py) is a ``KernelState`` with the public verbs on top. The
tables are public so the rule modules can share them; tests read them through the facade's
views (``function(bdf)``, ``driver(name)``, ...) and never change them.
"""

from __future__ import annotations

import posixpath
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Optional

from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness.kernel.model import (
    DEFAULT_KERNEL_CONFIG,
    Driver,
    Function,
    Module,
    UnbindGate,
    Write,
)
from tests.harness.kernel.tree import SysfsTree


class KernelState:
    """Everything the rules read and change, and the one lock that serialises them."""

    def __init__(
        self,
        fs: FakeFilesystem,
        *,
        release: str,
        iommu: bool,
        host_root: str,
        iommu_unit: str,
        cmdline: str,
        modules_supported: bool,
    ) -> None:
        if not host_root.startswith("/") or host_root.rstrip("/") == "":
            raise ValueError("host_root must be an absolute path other than /: never the real /sys")
        self.fs = fs
        self.tree = SysfsTree(fs)
        self.release = release
        self.iommu = iommu
        self.iommu_unit = iommu_unit
        self.host_root = host_root.rstrip("/")
        self.sys_root = self.host_root + "/sys"
        self.dev_root = self.host_root + "/dev"
        self.proc_root = self.host_root + "/proc"
        self.cmdline = cmdline
        self.cpu_vendor = "AuthenticAMD" if iommu_unit.startswith("ivhd") else "GenuineIntel"
        self.kernel_config: dict[str, str] = dict(DEFAULT_KERNEL_CONFIG)
        self.drivers_autoprobe = True
        self.modules_supported = modules_supported
        self.noiommu = False
        # K25: /dev/vfio/devices/vfioK per function on vfio (CONFIG_VFIO_DEVICE_CDEV), and
        # whether groups get /dev/vfio/N at all (CONFIG_VFIO_GROUP)
        self.vfio_cdev = False
        self.vfio_group_nodes = True
        # observations
        self.writes: list[Write] = []
        self.dmesg: list[str] = []
        self.modprobe_calls: list[tuple[str, ...]] = []
        # the model; every change happens under this lock (an unbind blocks outside it)
        self.lock = threading.RLock()
        self.function_table: dict[str, Function] = {}
        self.driver_table: dict[str, Driver] = {}  # registration order
        self.module_table: dict[str, Module] = {}
        self.group_table: dict[int, set[str]] = {}  # group number -> member BDFs
        self.group_types: dict[int, str] = {}
        self.load_seq = 0
        self.next_address = 0xFFFFFFFFC0800000
        # /dev/vfio nodes held back while udev "lags" (iommu_groups.defer_nodes)
        self.defer_nodes = False
        self.pending_nodes: set[int] = set()
        # the fault plan (FakeKernel.fail_next_write, block_unbind, ...)
        # (errno, data or None for any write) per file, in the order queued
        self.failures: defaultdict[str, deque[tuple[int, Optional[str]]]] = defaultdict(deque)
        # (data or None for any, callback) run once after a write to the file
        self.after_write_hooks: defaultdict[str, list[tuple[Optional[str], Callable[[], None]]]] = (
            defaultdict(list)
        )
        self.gates: dict[str, UnbindGate] = {}
        self.all_gates: list[UnbindGate] = []
        self.probe_failures: dict[tuple[str, str], int] = {}

    def sys_path(self, rel: str) -> str:
        return posixpath.join(self.sys_root, rel)

    def host_path(self, rel: str) -> str:
        return posixpath.join(self.host_root, rel)

    def canonical(self, path: str) -> str:
        """A kernel file's name as :class:`Write` records it, whichever path names it."""
        rel = path
        if rel.startswith(self.sys_root + "/"):
            rel = rel[len(self.sys_root) + 1 :]
        rel = rel.lstrip("/")
        if rel.startswith("devices/"):
            for fn in self.function_table.values():
                if rel.startswith(fn.path + "/") and "/" not in rel[len(fn.path) + 1 :]:
                    return f"bus/pci/devices/{fn.bdf}/{rel[len(fn.path) + 1 :]}"
        return rel

    def apply_rule(self, rel: str, data: bytes) -> None:
        """Run the kernel's store function of the file ``rel`` (canonical) on ``data``.

        The facade routes this to the rule modules (tests/harness/kernel/routes.py); the
        layer below only knows that a write reaches some rule.
        """
        raise NotImplementedError("FakeKernel routes writes to the rule modules")

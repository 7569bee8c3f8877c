"""The fake-kernel test harness: a Linux PCI/VFIO sysfs on pyfakefs.

``FakeKernel(fs)`` lays out /node/sys, /node/dev, /node/proc, /node/lib/modules/<release>;
``FakeKernel.from_snapshot(fs, data)`` rebuilds a real machine from tests/fixtures/snapshots;
``tests.harness.topologies.npu_node(k)`` adds a Rebellions NPU node. See README.md here;
the kernel facts the fake encodes are docs/kernel-facts.md.
"""

from tests.harness.fakekernel import (
    FakeKernel,
    ModuleInUseError,
    UnbindGate,
    UnknownModuleError,
    Write,
)
from tests.harness.snapshot import diff_snapshots, take_snapshot

__all__ = [
    "FakeKernel",
    "ModuleInUseError",
    "UnbindGate",
    "UnknownModuleError",
    "Write",
    "diff_snapshots",
    "take_snapshot",
]

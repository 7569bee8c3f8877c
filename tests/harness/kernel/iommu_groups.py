"""IOMMU groups and their VFIO nodes: /sys/kernel/iommu_groups/N and /dev/vfio/N.

- docs/kernel-facts.md K14: a function in a group has an ``iommu_group`` link to
  kernel/iommu_groups/N, whose ``devices/`` lists every member; no groups exist with the
  IOMMU off; a new group takes the lowest free number (the kernel allocates them from an
  IDA), so numbers are reused and never stable.
- K15: /dev/vfio/N appears when the first member of group N is bound to a vfio driver and
  goes when the last one leaves it; with devtmpfs it is there when the probe returns (the
  QEMU tier saw no delay), ``defer_nodes`` models a udev that lags until :func:`settle`.
- K22: in vfio's no-IOMMU mode the node of a group vfio made is /dev/vfio/noiommu-N.
"""

from __future__ import annotations

import posixpath
from typing import Optional

from tests.harness.kernel.model import Function
from tests.harness.kernel.state import KernelState
from tests.harness.kernel.tree import const, line


def next_group(s: KernelState) -> int:
    """The lowest free group number (iommu_group_alloc uses an IDA): numbers get reused."""
    used = set(s.group_table)
    used |= {f.group for f in s.function_table.values() if f.group is not None}
    return next(n for n in range(len(used) + 1) if n not in used)


def join_group(s: KernelState, fn: Function) -> None:
    """Add ``fn`` to its group: the group's folder (made with the first member) and links."""
    if fn.group is None or not (s.iommu or fn.noiommu_group):
        return
    group = fn.group
    base = s.sys_path(f"kernel/iommu_groups/{group}")
    if group not in s.group_table:
        s.group_table[group] = set()
        s.tree.mkdir(f"{base}/devices")
        s.tree.file(f"{base}/type", lambda: line(s.group_types.get(group, "DMA-FQ")))
        s.tree.file(f"{base}/reserved_regions", const(b""))
    s.group_table[group].add(fn.bdf)
    s.tree.link(f"{base}/devices/{fn.bdf}", "../../../../" + fn.path)
    s.tree.link(
        s.sys_path(f"{fn.path}/iommu_group"), "../" * fn.depth + f"kernel/iommu_groups/{group}"
    )


def leave_group(s: KernelState, fn: Function) -> None:
    """Take ``fn`` out of its group; the group goes with its last member."""
    if fn.group is None or fn.group not in s.group_table:
        return
    members = s.group_table[fn.group]
    members.discard(fn.bdf)
    s.tree.remove(s.sys_path(f"kernel/iommu_groups/{fn.group}/devices/{fn.bdf}"))
    if not members:
        del s.group_table[fn.group]
        s.tree.remove(s.sys_path(f"kernel/iommu_groups/{fn.group}"))


def group_on_vfio(s: KernelState, group: int) -> bool:
    """Whether any member of ``group`` is bound to a vfio driver (so its node exists)."""
    for bdf in s.group_table.get(group, ()):
        drv = s.driver_table.get(s.function_table[bdf].driver or "")
        if drv is not None and drv.vfio:
            return True
    return False


def node_name(s: KernelState, group: int) -> str:
    """``N``, or ``noiommu-N`` for a group vfio's no-IOMMU mode made."""
    members = [s.function_table[b] for b in s.group_table.get(group, ())]
    return f"noiommu-{group}" if any(m.noiommu_group for m in members) else str(group)


def node_add(s: KernelState, group: int) -> None:
    if not s.vfio_group_nodes:
        return
    if s.defer_nodes:
        s.pending_nodes.add(group)
        return
    s.tree.chardev(posixpath.join(s.dev_root, f"vfio/{node_name(s, group)}"))


def node_remove(s: KernelState, group: int, name: Optional[str] = None) -> None:
    s.pending_nodes.discard(group)
    s.tree.remove(posixpath.join(s.dev_root, f"vfio/{name or node_name(s, group)}"))


def defer_nodes(s: KernelState, defer: bool) -> None:
    """Model udev/devtmpfs lag: new /dev/vfio/N nodes appear only at :func:`settle`."""
    with s.lock:
        s.defer_nodes = defer
        if not defer:
            settle(s)


def settle(s: KernelState) -> None:
    """Create the /dev/vfio/N nodes held back by :func:`defer_nodes` (udevadm settle)."""
    with s.lock:
        for group in sorted(s.pending_nodes):
            if group_on_vfio(s, group):
                s.tree.chardev(posixpath.join(s.dev_root, f"vfio/{node_name(s, group)}"))
        s.pending_nodes.clear()

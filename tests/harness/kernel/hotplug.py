"""Hot-unplug: a function (children and VFs first) disappears from sysfs.

docs/kernel-facts.md K18: what ``devices/BDF/remove`` does, and what a PCIe hot-unplug
does; the driver lets go first (K2), the function leaves its group (K14), a VF also leaves
its PF's ``virtfnN`` links and ``sriov_numvfs`` count (K17).
"""

from __future__ import annotations

from tests.harness.kernel import binding, iommu_groups
from tests.harness.kernel.state import KernelState


def remove_function(s: KernelState, bdf: str) -> None:
    with s.lock:
        fn = s.function_table.get(bdf)
        if fn is None:
            return
        for child in [f.bdf for f in s.function_table.values() if f.parent == bdf]:
            remove_function(s, child)
        for vf in list(fn.vfs):
            remove_function(s, vf)
        if fn.driver is not None:
            binding.detach(s, fn)
        iommu_groups.leave_group(s, fn)
        if fn.physfn is not None and fn.physfn in s.function_table:
            pf = s.function_table[fn.physfn]
            pf.vfs.remove(bdf)
            folder = s.tree.folder(s.sys_path(pf.path))
            for name, entry in list(folder.entries.items()):
                if name.startswith("virtfn") and entry.contents == f"../{bdf}":
                    s.tree.remove(s.sys_path(f"{pf.path}/{name}"))
        s.tree.remove(s.sys_path(f"bus/pci/devices/{bdf}"))
        s.tree.remove(s.sys_path(fn.path))
        del s.function_table[bdf]

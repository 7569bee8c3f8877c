"""What a function's folder shows while a driver holds it, and what goes when it lets go.

Every way a driver comes to hold a function (bind, drivers_probe, a module load, new_id,
setup) ends in :func:`attach`; every way it lets go (unbind, rmmod, unplug) in
:func:`detach`. The facts, in docs/kernel-facts.md:

- K2: the ``driver`` link (relative, ``../`` times the folder's depth, to
  bus/pci/drivers/NAME) and the driver's own BDF link are the binding; nothing else is.
- K15: a vfio driver adds ``vfio-dev/vfioK`` (K the lowest free index) and makes the
  group's /dev/vfio node appear; the node goes when no member is on a vfio driver.
- K25: with the device cdev, ``/dev/vfio/devices/vfioK`` comes and goes with ``vfio-dev``.
- K19: a native driver's own entries (``net``, ``ptp``, ...) come with it and go with it;
  ``waiting_for_supplier`` goes at the first successful probe.
- K20: a function idles in D3hot on vfio-pci when it has power management, D0 otherwise.
- K22: in no-IOMMU mode vfio gives a group-less function a group of its own, and takes it
  away again at detach.
"""

from __future__ import annotations

from tests.harness.kernel import iommu_groups
from tests.harness.kernel.model import Driver, Function
from tests.harness.kernel.state import KernelState
from tests.harness.kernel.tree import const

VFIO_GROUP_MAJOR = 242  # dynamic on a real kernel; only shown in vfio-dev/vfioK/dev


def attach(s: KernelState, fn: Function, drv: Driver) -> None:
    """``drv`` now holds ``fn``: links, vfio entries, power state, driver entries."""
    fn.driver = drv.name
    d = s.sys_path(fn.path)
    s.tree.link(f"{d}/driver", "../" * fn.depth + f"bus/pci/drivers/{drv.name}")
    s.tree.link(s.sys_path(f"bus/pci/drivers/{drv.name}/{fn.bdf}"), "../../../../" + fn.path)
    if fn.waiting_for_supplier:
        fn.waiting_for_supplier = False
        s.tree.remove(f"{d}/waiting_for_supplier")
    if drv.vfio:
        if fn.group is None or not s.iommu:
            # vfio's no-IOMMU mode gives the device a group of its own
            fn.group, fn.noiommu_group = iommu_groups.next_group(s), True
            iommu_groups.join_group(s, fn)
        used = {f.vfio_index for f in s.function_table.values() if f.vfio_index is not None}
        index = next(i for i in range(len(used) + 1) if i not in used)
        fn.vfio_index = index
        s.tree.file(f"{d}/vfio-dev/vfio{index}/dev", const(f"{VFIO_GROUP_MAJOR}:{index}\n"))
        if s.vfio_cdev:
            devname = f"vfio/devices/vfio{index}"
            s.tree.file(f"{d}/vfio-dev/vfio{index}/uevent", const(f"DEVNAME={devname}\n"))
            s.tree.chardev(f"{s.dev_root}/{devname}")
        fn.power_state = "D3hot" if fn.pm else "D0"
        if fn.group is not None:
            iommu_groups.node_add(s, fn.group)
    else:
        fn.power_state = "D0"
        for child in fn.driver_children.get(drv.name, []):
            s.tree.mkdir(f"{d}/{child}")


def detach(s: KernelState, fn: Function) -> None:
    """Whatever driver holds ``fn`` lets go of it (remove() has returned)."""
    name = fn.driver
    if name is None:
        return
    drv = s.driver_table.get(name)
    d = s.sys_path(fn.path)
    s.tree.remove(f"{d}/driver")
    s.tree.remove(s.sys_path(f"bus/pci/drivers/{name}/{fn.bdf}"))
    fn.driver = None
    if drv is not None and drv.vfio:
        s.tree.remove(f"{d}/vfio-dev")
        s.tree.remove(f"{s.dev_root}/vfio/devices/vfio{fn.vfio_index}")
        fn.vfio_index = None
        fn.power_state = "D0"
        if fn.group is not None and not iommu_groups.group_on_vfio(s, fn.group):
            iommu_groups.node_remove(s, fn.group, iommu_groups.node_name(s, fn.group))
        if fn.noiommu_group:
            iommu_groups.leave_group(s, fn)
            s.tree.remove(f"{d}/iommu_group")
            fn.group, fn.noiommu_group = None, False
    else:
        for child in fn.driver_children.get(name, []):
            s.tree.remove(f"{d}/{child}")


def setup_bind(s: KernelState, fn: Function, name: str) -> None:
    """Bind at setup time (no probe, no checks a test could trip by accident, no log)."""
    drv = s.driver_table.get(name)
    if drv is None:
        raise ValueError(f"driver {name} is not registered (add_driver first)")
    if drv.vfio and (not s.iommu or fn.group is None) and not s.noiommu:
        raise ValueError(f"{fn.bdf}: vfio driver {name} needs an IOMMU group")
    if fn.driver is not None:
        raise ValueError(f"{fn.bdf} is already bound to {fn.driver}")
    attach(s, fn, drv)

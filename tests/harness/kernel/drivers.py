"""Registering and unregistering a PCI driver: the bus/pci/drivers/NAME folder.

docs/kernel-facts.md K2 and K21: a registered driver has ``bind``, ``unbind``, ``new_id``,
``remove_id`` and ``uevent`` files, a ``module`` link when it comes from a module (and
/sys/module/MOD/drivers/pci:NAME pointing back, how rule 5 maps a module to its driver,
K12), and a link per bound function. Unregistering (rmmod) first unbinds every function the
driver holds.
"""

from __future__ import annotations

from tests.harness.kernel import binding, writes
from tests.harness.kernel.model import Driver
from tests.harness.kernel.state import KernelState

DRIVER_FILES = ("bind", "unbind", "new_id", "remove_id", "uevent")


def register(s: KernelState, drv: Driver) -> None:
    s.driver_table[drv.name] = drv
    base = f"bus/pci/drivers/{drv.name}"
    s.tree.mkdir(s.sys_path(base))
    for attr in DRIVER_FILES:
        s.tree.file(s.sys_path(f"{base}/{attr}"), None, writes.store(s, f"{base}/{attr}"))
    if drv.module is not None:
        s.tree.link(s.sys_path(f"{base}/module"), f"../../../../module/{drv.module}")
        s.tree.link(
            s.sys_path(f"module/{drv.module}/drivers/pci:{drv.name}"),
            f"../../../bus/pci/drivers/{drv.name}",
        )


def unregister(s: KernelState, name: str) -> None:
    drv = s.driver_table[name]
    for fn in [f for f in s.function_table.values() if f.driver == name]:
        binding.detach(s, fn)
    del s.driver_table[name]
    s.tree.remove(s.sys_path(f"bus/pci/drivers/{name}"))
    if drv.module is not None:
        s.tree.remove(s.sys_path(f"module/{drv.module}/drivers/pci:{name}"))

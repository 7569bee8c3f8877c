"""bus/pci/drivers/NAME/bind and .../unbind (bind_store, unbind_store: drivers/base/bus.c).

- docs/kernel-facts.md K4, ``bind``: ENODEV when the function does not exist or the driver
  does not match it (an override naming another driver included), EBUSY when it matches
  but the function already has a driver (the match is checked first), else the probe's
  own errno (K13: EINVAL or EBUSY from vfio-pci).
- K5, ``unbind``: ENODEV unless the function is bound to this very driver. The driver's
  remove() runs in the writer's thread and may block for as long as the function is in
  use (``FakeKernel.block_unbind``); the driver core removes the ``driver`` link before
  remove() runs, so a blocked unbind already looks unbound while the driver still owns
  the function (/dev/vfio/N and vfio-dev stay): seen in the QEMU tier with a process
  holding the group (tests/e2e/test_in_use.py).
"""

from __future__ import annotations

import errno

from tests.harness.kernel import binding, matching
from tests.harness.kernel.buffers import device_name, oserror
from tests.harness.kernel.state import KernelState


def bind(s: KernelState, driver: str, data: bytes) -> None:
    """bind_store + device_driver_attach."""
    bdf = device_name(data)
    with s.lock:
        drv = s.driver_table.get(driver)
        fn = s.function_table.get(bdf)
        if drv is None or fn is None or matching.match(drv, fn) is None:
            raise oserror(errno.ENODEV)
        if fn.driver is not None:
            raise oserror(errno.EBUSY)  # checked after the match, as the kernel does
        err = matching.try_probe(s, drv, fn)
        if err is not None:
            raise oserror(err)


def unbind(s: KernelState, driver: str, data: bytes) -> None:
    """unbind_store: ENODEV unless the device is bound to this very driver."""
    bdf = device_name(data)
    with s.lock:
        fn = s.function_table.get(bdf)
        if fn is None or fn.driver != driver:
            raise oserror(errno.ENODEV)
        gate = s.gates.pop(bdf, None)
    if gate is not None:
        # __device_release_driver removes the sysfs links (driver_sysfs_remove) before it
        # calls remove(), so while remove() blocks the function already looks unbound.
        with s.lock:
            s.tree.remove(s.sys_path(f"{fn.path}/driver"))
            s.tree.remove(s.sys_path(f"bus/pci/drivers/{driver}/{fn.bdf}"))
        # remove() runs in the writer's context: block here, outside the model lock
        gate.entered.set()
        gate.wait()
    with s.lock:
        found = s.function_table.get(bdf)
        if found is not None and found.driver == driver:
            binding.detach(s, found)

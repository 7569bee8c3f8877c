"""bus/pci/devices/BDF/remove, .../rescan, .../reset, bus/pci/rescan, and the files the
fake accepts without effect.

docs/kernel-facts.md K18: writing a true number to ``remove`` unplugs the function (its
children and VFs first); ``reset`` takes only ``1`` (EINVAL else) and changes nothing the
product sees. ``rescan`` is accepted and does nothing here. DOUBT: on the kernel a rescan
brings removed functions back as new device objects (override empty, native driver bound
at once); the fake does not model it. ``uevent`` files and ``resource_alignment`` accept
any write and change nothing the product reads.
"""

from __future__ import annotations

import errno

from tests.harness.kernel import hotplug
from tests.harness.kernel.buffers import kstrtoul, oserror
from tests.harness.kernel.state import KernelState


def remove(s: KernelState, bdf: str, data: bytes) -> None:
    if kstrtoul(data):
        hotplug.remove_function(s, bdf)


def reset(_s: KernelState, _bdf: str, data: bytes) -> None:
    if kstrtoul(data) != 1:
        raise oserror(errno.EINVAL)


def accept(_s: KernelState, _name: str, _data: bytes) -> None:
    """Stores that succeed and change nothing the product can see (uevent, rescan)."""

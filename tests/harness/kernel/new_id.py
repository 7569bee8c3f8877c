"""bus/pci/drivers/NAME/new_id and .../remove_id (drivers/pci/pci-driver.c).

docs/kernel-facts.md K7: ``new_id`` takes "vendor device [subvendor subdevice class
class_mask [driver_data]]" in hex (EINVAL with fewer than two fields), adds the ID to the
driver for every function, and probes every unbound function it matches at once; the entry
is global and stays until ``remove_id``. EEXIST when the driver already matches that ID
(a dynamic or a compiled-in one; not checked when driver_data is given). Dynamic IDs match
even on vfio-pci without an override (K10). ``remove_id`` of an ID that is not there is
ENODEV, and removing one never unbinds.
"""

from __future__ import annotations

import errno

from tests.harness.kernel import matching
from tests.harness.kernel.buffers import oserror, scan_hex
from tests.harness.kernel.model import DynId, Function
from tests.harness.kernel.state import KernelState
from tests.harness.pci import PCI_ANY_ID


def add(s: KernelState, driver: str, data: bytes) -> None:
    """new_id_store."""
    fields = scan_hex(data, 7)
    if len(fields) < 2:
        raise oserror(errno.EINVAL)
    defaults = [PCI_ANY_ID, PCI_ANY_ID, 0, 0]  # subvendor, subdevice, class, class_mask
    values = (fields + defaults[len(fields) - 2 :])[:6]
    dyn = DynId(values[0], values[1], values[2], values[3], values[4], values[5])
    with s.lock:
        drv = s.driver_table[driver]
        if len(fields) != 7:
            # pci_match_id on a device made of the new ID alone
            probe = Function(
                bdf="ffff:ff:1f.7",
                vendor=dyn.vendor,
                device=dyn.device,
                pci_class=dyn.pci_class,
                subsystem_vendor=dyn.subvendor,
                subsystem_device=dyn.subdevice,
                revision=0,
                numa_node=-1,
                header_type=0,
                group=None,
                path="",
                parent=None,
            )
            if matching.match(drv, probe) is not None:
                raise oserror(errno.EEXIST)
        drv.dyn_ids.append(dyn)
        matching.driver_attach(s, drv)


def remove(s: KernelState, driver: str, data: bytes) -> None:
    """remove_id_store."""
    fields = scan_hex(data, 6)
    if len(fields) < 2:
        raise oserror(errno.EINVAL)
    vendor, device = fields[0], fields[1]
    subvendor = fields[2] if len(fields) > 2 else PCI_ANY_ID
    subdevice = fields[3] if len(fields) > 3 else PCI_ANY_ID
    pci_class = fields[4] if len(fields) > 4 else 0
    class_mask = fields[5] if len(fields) > 5 else 0
    with s.lock:
        drv = s.driver_table[driver]
        for dyn in drv.dyn_ids:
            if (
                dyn.vendor == vendor
                and dyn.device == device
                and subvendor in (PCI_ANY_ID, dyn.subvendor)
                and subdevice in (PCI_ANY_ID, dyn.subdevice)
                and not ((dyn.pci_class ^ pci_class) & class_mask)
            ):
                drv.dyn_ids.remove(dyn)
                return
        raise oserror(errno.ENODEV)

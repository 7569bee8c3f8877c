"""Uevent datagrams in the kernel's format, built the way lib/kobject_uevent.c lays them out.

Header ``ACTION@DEVPATH``, then ``ACTION``, ``DEVPATH``, ``SUBSYSTEM``, the device core's
properties (``DRIVER`` when bound), the bus's (for PCI: ``PCI_CLASS``, ``PCI_ID``,
``PCI_SUBSYS_ID``, ``PCI_SLOT_NAME``, ``MODALIAS``), and ``SEQNUM`` last; every field ends
with a NUL byte.
"""

from __future__ import annotations

import itertools
from typing import Optional

_seq = itertools.count(4000)


def datagram(action: str, devpath: str, props: list[tuple[str, str]]) -> bytes:
    fields = [f"{action}@{devpath}", *(f"{k}={v}" for k, v in props)]
    return b"".join(f.encode() + b"\0" for f in fields)


def pci_event(
    action: str,
    bdf: str = "0000:03:00.0",
    *,
    driver: Optional[str] = None,
    vendor: str = "1EFF",
    device: str = "1220",
    pci_class: str = "120000",
    seqnum: Optional[int] = None,
    parent: str = "/devices/pci0000:00/0000:00:02.0",
) -> bytes:
    devpath = f"{parent}/{bdf}"
    props = [("ACTION", action), ("DEVPATH", devpath), ("SUBSYSTEM", "pci")]
    if driver is not None:
        props.append(("DRIVER", driver))
    props += [
        ("PCI_CLASS", pci_class),
        ("PCI_ID", f"{vendor}:{device}"),
        ("PCI_SUBSYS_ID", f"{vendor}:0000"),
        ("PCI_SLOT_NAME", bdf),
        ("MODALIAS", f"pci:v0000{vendor}d0000{device}sv0000{vendor}sd00000000bc12sc00i00"),
        ("SEQNUM", str(seqnum if seqnum is not None else next(_seq))),
    ]
    return datagram(action, devpath, props)


def driver_event(action: str, driver: str = "vfio-pci") -> bytes:
    devpath = f"/bus/pci/drivers/{driver}"
    return datagram(
        action,
        devpath,
        [
            ("ACTION", action),
            ("DEVPATH", devpath),
            ("SUBSYSTEM", "drivers"),
            ("SEQNUM", str(next(_seq))),
        ],
    )


def libudev_message() -> bytes:
    """udev's re-broadcast: magic, then a binary header (only the prefix matters here)."""
    return b"libudev\0\xfe\xed\xca\xfe" + b"\0" * 24 + b"ACTION=add\0SUBSYSTEM=pci\0"

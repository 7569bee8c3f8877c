"""PCI formats as the kernel writes them: addresses, modaliases, modules.alias patterns.

Pure functions, no file system. The harness builds its sysfs files with these, and the harness's
own tests use :func:`best_alias` to show that the fake modules.alias answers rule 5
(docs/kernel-facts.md K12: the most specific alias wins).
"""

from __future__ import annotations

import fnmatch
import re
from typing import Optional

PCI_ANY_ID = 0xFFFFFFFF

_BDF_RE = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{2}):([0-1][0-9a-f])\.([0-7])$")


def parse_bdf(bdf: str) -> tuple[int, int, int]:
    """``"0000:03:00.1"`` -> ``(domain, bus, devfn)``; ``ValueError`` for anything else."""
    match = _BDF_RE.match(bdf)
    if match is None:
        raise ValueError(f"not a PCI address (DDDD:BB:DD.F, lower case): {bdf!r}")
    domain, bus, dev, fn = (int(part, 16) for part in match.groups())
    return domain, bus, (dev << 3) | fn


def format_bdf(domain: int, bus: int, devfn: int) -> str:
    return f"{domain:04x}:{bus:02x}:{devfn >> 3:02x}.{devfn & 7}"


def modalias(vendor: int, device: int, subvendor: int, subdevice: int, pci_class: int) -> str:
    """``pci:v00001EFFd00001220sv...sd...bc12sc00i00`` (drivers/pci/pci-sysfs.c, upper case)."""
    return (
        f"pci:v{vendor:08X}d{device:08X}sv{subvendor:08X}sd{subdevice:08X}"
        f"bc{(pci_class >> 16) & 0xFF:02X}sc{(pci_class >> 8) & 0xFF:02X}i{pci_class & 0xFF:02X}"
    )


def alias_pattern(
    prefix: str,
    *,
    vendor: Optional[int] = None,
    device: Optional[int] = None,
    pci_class: int = 0,
    class_mask: int = 0,
) -> str:
    """One modules.alias pattern as depmod's file2alias writes it for a pci_device_id.

    ``prefix`` is ``pci`` for ordinary drivers and ``vfio_pci`` for vfio-pci variant drivers
    (their ID tables use PCI_DRIVER_OVERRIDE_DEVICE_VFIO). A byte of the class is written only
    when its mask byte is 0xFF, otherwise ``*``.
    """

    def word(value: Optional[int]) -> str:
        return "*" if value is None or value == PCI_ANY_ID else f"{value:08X}"

    def byte(shift: int) -> str:
        if (class_mask >> shift) & 0xFF == 0xFF:
            return f"{(pci_class >> shift) & 0xFF:02X}"
        return "*"

    return f"{prefix}:v{word(vendor)}d{word(device)}sv*sd*bc{byte(16)}sc{byte(8)}i{byte(0)}"


def best_alias(alias_text: str, device_modalias: str, prefix: str = "pci") -> Optional[str]:
    """The module whose ``alias PREFIX:...`` line matches, the most specific (fewest ``*``) first.

    ``device_modalias`` is the content of devices/BDF/modalias (``pci:v...``); with
    ``prefix="vfio_pci"`` its ``pci:`` is replaced, as the vfio variant lookup does.
    """
    wanted = prefix + device_modalias[device_modalias.index(":") :]
    best: Optional[tuple[int, str]] = None
    for line in alias_text.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[0] != "alias" or not parts[1].startswith(prefix + ":"):
            continue
        if fnmatch.fnmatchcase(wanted, parts[1]):
            score = parts[1].count("*")
            if best is None or score < best[0]:
                best = (score, parts[2])
    return None if best is None else best[1]


def default_header_type(pci_class: int) -> int:
    """0 normal, 1 PCI-to-PCI bridge (class 0x0604xx, 0x0609xx), 2 CardBus bridge (0x0607xx)."""
    base_sub = pci_class >> 8
    if base_sub in (0x0604, 0x0609):
        return 1
    if base_sub == 0x0607:
        return 2
    return 0


def config_space(
    *,
    vendor: int,
    device: int,
    revision: int,
    pci_class: int,
    header_type: int,
    subvendor: int,
    subdevice: int,
    vf: bool = False,
) -> bytes:
    """The first 256 bytes of configuration space (enough for lspci-style readers); a VF's
    vendor and device IDs read all-ones, as the SR-IOV spec has them (K24)."""
    data = bytearray(256)
    data[0:2] = (0xFFFF if vf else vendor).to_bytes(2, "little")
    data[2:4] = (0xFFFF if vf else device).to_bytes(2, "little")
    data[6:8] = (0x0010).to_bytes(2, "little")  # status: capability list present
    data[8] = revision & 0xFF
    data[9:12] = (pci_class & 0xFFFFFF).to_bytes(3, "little")
    data[0x0E] = header_type & 0x7F
    if header_type == 0:
        data[0x2C:0x2E] = subvendor.to_bytes(2, "little")
        data[0x2E:0x30] = subdevice.to_bytes(2, "little")
    return bytes(data)


def normalize_module(name: str) -> str:
    """modprobe accepts ``vfio-pci`` and ``vfio_pci``; /sys/module and /proc/modules use ``_``."""
    return name.replace("-", "_")

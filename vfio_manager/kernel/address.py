"""PCI addresses (BDFs), parsed and validated before any path is built from them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from vfio_manager.errors import UsageError

# domain:bus:device.function; the domain may be omitted (0000 assumed). VMD domains have 5 digits.
_BDF = re.compile(
    r"^(?:(?P<domain>[0-9a-f]{4,5}):)?(?P<bus>[0-9a-f]{2}):(?P<device>[0-9a-f]{2})\.(?P<function>[0-7])$"
)


@dataclass(frozen=True, order=True)
class PciAddress:
    """A PCI function address; ``str()`` gives the kernel's canonical form ``0000:03:00.0``."""

    domain: int
    bus: int
    device: int
    function: int

    @classmethod
    def parse(cls, text: str) -> PciAddress:
        """Parse ``0000:03:00.0`` or ``03:00.0`` (any case); anything else raises
        :class:`UsageError`, so a malformed argument never becomes a path under /sys."""
        address = cls.from_sysfs_name(text)
        if address is None:
            raise UsageError(
                f"{text!r} is not a PCI address",
                remedy="give it as DOMAIN:BUS:DEVICE.FUNCTION, e.g. 0000:03:00.0 or 03:00.0 "
                "(see `lspci -D`)",
            )
        return address

    @classmethod
    def from_sysfs_name(cls, name: str) -> PciAddress | None:
        """Parse a directory name read from sysfs; ``None`` (no exception) for a non-BDF."""
        match = _BDF.match(name.strip().lower()) if isinstance(name, str) else None
        if match is None or int(match["device"], 16) > 0x1F:
            return None
        return cls(
            *(int(match[part] or "0", 16) for part in ("domain", "bus", "device", "function"))
        )

    @cached_property
    def text(self) -> str:
        """The canonical form, built once: every sysfs path of the function starts with it."""
        return f"{self.domain:04x}:{self.bus:02x}:{self.device:02x}.{self.function}"

    def __str__(self) -> str:
        return self.text

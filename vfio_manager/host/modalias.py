"""Which module serves a function: ``modules.alias`` matched against the function's modalias.

Native drivers come from ``alias pci:...`` lines (what ``modprobe -R`` does); vfio variant
drivers from ``alias vfio_pci:...`` lines. The most specific pattern (fewest wildcards) wins.
Patterns are bucketed by vendor so a 4,096-function host does not scan every alias for every
function, and results are cached per modalias (VFs share one).
"""

from __future__ import annotations

import fnmatch
import re
from typing import Optional

from vfio_manager.host.files import HostFiles

_VENDOR_PREFIX = re.compile(r"^v([0-9A-F]{8})", re.IGNORECASE)


class AliasTable:
    """The ``pci:`` and ``vfio_pci:`` aliases of one kernel's modules.alias."""

    def __init__(self, lines: list[str]) -> None:
        self._buckets: dict[str, dict[Optional[str], list[tuple[str, str]]]] = {
            "pci": {},
            "vfio_pci": {},
        }
        self._cache: dict[tuple[str, str], Optional[str]] = {}
        for line in lines:
            parts = line.split()
            if len(parts) != 3 or parts[0] != "alias":
                continue
            kind, _, pattern = parts[1].partition(":")
            if kind not in self._buckets:
                continue
            vendor = _VENDOR_PREFIX.match(pattern)
            key = vendor.group(1).upper() if vendor else None
            self._buckets[kind].setdefault(key, []).append((pattern, parts[2]))

    @classmethod
    def load(cls, host: HostFiles) -> AliasTable:
        return cls(host.read_lines(host.modules_file("modules.alias")))

    def _best(self, kind: str, modalias: str) -> Optional[str]:
        key = (kind, modalias)
        if key in self._cache:
            return self._cache[key]
        body = modalias.partition(":")[2]
        vendor = _VENDOR_PREFIX.match(body)
        buckets = self._buckets[kind]
        candidates = buckets.get(vendor.group(1).upper() if vendor else None, [])
        best: Optional[tuple[int, int, str]] = None
        for pattern, module in candidates + buckets.get(None, []):
            if fnmatch.fnmatchcase(body, pattern):
                # fewest wildcards first; among equals, the longer literal text is more specific
                score = (pattern.count("*"), -len(pattern.replace("*", "")), module)
                if best is None or score < best:
                    best = score
        result = best[2] if best else None
        self._cache[key] = result
        return result

    def native_module(self, modalias: str) -> Optional[str]:
        """The host module for a ``pci:v...`` modalias, as ``modprobe -R`` would pick it."""
        return self._best("pci", modalias)

    def vfio_variant_module(self, modalias: str) -> Optional[str]:
        """A vfio-pci variant module for the function, if the kernel ships one."""
        return self._best("vfio_pci", modalias)

"""Which module serves a function: its modalias matched against ``modules.alias``, as
``modprobe -R`` does; vfio variants come from ``alias vfio_pci:`` lines (kernel-facts K12)."""

from __future__ import annotations

import fnmatch
import re
from typing import Optional

from vfio_manager.errors import UsageError
from vfio_manager.host.files import HostFiles
from vfio_manager.kernel.sysfs import valid_name
from vfio_manager.log import get_logger

log = get_logger("vfio_manager.host.modalias")

_VENDOR_PREFIX = re.compile(r"^v([0-9A-F]{8})", re.IGNORECASE)


def glob_match(text: str, pattern: str) -> bool:
    """``fnmatch.fnmatchcase`` without a regex per pattern (thousands per lookup): a ``*``-only
    pattern matches when its pieces appear in order, the first at the start, the last at the end."""
    if "?" in pattern or "[" in pattern:
        return fnmatch.fnmatchcase(text, pattern)
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return text == pattern
    head, tail = pieces[0], pieces[-1]
    end = len(text) - len(tail)
    if end < len(head) or not text.startswith(head) or not text.endswith(tail):
        return False
    at = len(head)
    for piece in pieces[1:-1]:
        at = text.find(piece, at, end)
        if at < 0:
            return False
        at += len(piece)
    return True


class AliasTable:
    """The ``pci:`` and ``vfio_pci:`` aliases of modules.alias (~26,000 lines), extracted per
    vendor on first use by one regex scan of the bytes; answers are cached per modalias."""

    def __init__(self, text: bytes) -> None:
        self._text = b"\n" + text
        self._buckets: dict[tuple[str, Optional[str]], list[tuple[str, str]]] = {}
        self._cache: dict[tuple[str, str], Optional[str]] = {}

    @classmethod
    def load(cls, host: HostFiles) -> AliasTable:
        """The host's table; an empty one when modules.alias is unreadable."""
        try:
            with open(host.modules_file("modules.alias"), "rb") as handle:
                return cls(handle.read())
        except OSError:
            return cls(b"")

    def _bucket(self, kind: str, vendor: Optional[str]) -> list[tuple[str, str]]:
        """(pattern, module) of the ``alias KIND:PATTERN MODULE`` lines for one vendor;
        ``vendor=None``: the patterns that do not start with a literal vendor."""
        key = (kind, vendor)
        if key not in self._buckets:
            head = f"v{vendor}" if vendor is not None else r"(?!v[0-9A-Fa-f]{8})"
            line = re.compile(
                rf"\nalias[ \t]+{kind}:({head}\S*)[ \t]+(\S+)[ \t\r]*(?=\n|\Z)".encode()
            )
            found = [
                (pattern.decode("utf-8", "replace"), module.decode("utf-8", "replace"))
                for pattern, module in line.findall(self._text)
            ]
            self._buckets[key] = [(p, m) for p, m in found if _module_name(kind, p, m)]
        return self._buckets[key]

    def _best(self, kind: str, modalias: str) -> Optional[str]:
        key = (kind, modalias)
        if key in self._cache:
            return self._cache[key]
        body = modalias.partition(":")[2]
        vendor = _VENDOR_PREFIX.match(body)
        candidates = self._bucket(kind, vendor.group(1).upper()) if vendor else []
        # fewest wildcards first; among equals, the longer literal text is more specific
        scores = [
            (pattern.count("*"), -len(pattern.replace("*", "")), module)
            for pattern, module in candidates + self._bucket(kind, None)
            if glob_match(body, pattern)
        ]
        self._cache[key] = min(scores)[2] if scores else None
        return self._cache[key]

    def native_module(self, modalias: str) -> Optional[str]:
        """The host module for a ``pci:v...`` modalias, as ``modprobe -R`` would pick it."""
        return self._best("pci", modalias)

    def vfio_variant_module(self, modalias: str) -> Optional[str]:
        """A vfio-pci variant module for the function, if the kernel ships one."""
        return self._best("vfio_pci", modalias)


def _module_name(kind: str, pattern: str, module: str) -> bool:
    """Whether ``module`` can be a module's name; a line naming none is skipped, said once."""
    try:
        valid_name(module, "module")
    except UsageError as err:
        log.warning(
            "modules.alias line skipped",
            alias=f"{kind}:{pattern}",
            module=module,
            reason=err.message,
        )
        return False
    return True

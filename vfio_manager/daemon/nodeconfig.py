"""``--node-config``: this node's selection from a file, or from a directory holding one file
per node name and ``default`` (a mounted ConfigMap), in the environment file's syntax; re-read
when it changes, a bad one logged and the last good one kept."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Optional

from vfio_manager.errors import UsageError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.log import get_logger
from vfio_manager.pipeline.selection import (
    Selector,
    parse_count,
    parse_id,
    parse_numa_node,
    parse_product,
    parse_vfs,
)

log = get_logger("vfio_manager.daemon.nodeconfig")

_LIMIT = 65536
_REMEDY = "fix the node configuration (see docs/daemon.md#node-configuration)"


def _each(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda value: frozenset(parse(v) for v in value.split(",") if v.strip())


# the keys a node configuration may set: each replaces the command line's value
KEYS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "VFIO_MANAGER_DEVICE_ID": (
        "device_ids",
        _each(lambda v: parse_id(v, what="device ID", bits=16)),
    ),
    "VFIO_MANAGER_PRODUCT": ("products", _each(parse_product)),
    "VFIO_MANAGER_BDF": ("bdfs", _each(PciAddress.parse)),
    "VFIO_MANAGER_NUMA_NODE": ("numa_nodes", _each(parse_numa_node)),
    "VFIO_MANAGER_PER_NUMA_NODE": ("per_numa_node", lambda v: parse_count(v) if v else None),
    "VFIO_MANAGER_EXCLUDE": ("exclude", _each(PciAddress.parse)),
    "VFIO_MANAGER_VFS": ("vfs", _each(parse_vfs)),
}


def parse_env_file(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines as systemd's ``EnvironmentFile=`` reads them: ``#`` and ``;``
    comments, blank lines, values optionally in matching quotes, no ``$`` expansion."""
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not (key.isascii() and key.replace("_", "a").isalnum()) or key[0].isdigit():
            raise UsageError(f"line {number}: {raw.strip()!r} is not KEY=VALUE", remedy=_REMEDY)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[key] = value
    return found


def selection_of(text: str, base: Selector) -> Selector:
    """``base`` with the keys ``text`` sets replaced; :class:`UsageError` for an unknown key
    or a bad value, naming it."""
    changes = {}
    for key, value in parse_env_file(text).items():
        if key not in KEYS:
            raise UsageError(f"unknown key {key}", remedy=f"use only {', '.join(KEYS)}; {_REMEDY}")
        field, parse = KEYS[key]
        try:
            changes[field] = parse(value)
        except UsageError as err:
            raise UsageError(f"{key}: {err.message}", remedy=err.remedy) from err
    return replace(base, **changes)


class NodeConfig:
    """The node's selection: ``base`` (the command line) with the node's file applied.
    ``path`` is that file, or a directory whose ``<node_name>`` (else ``default``) file is
    it; no such file there leaves ``base``."""

    def __init__(self, path: str, node_name: str, base: Selector) -> None:
        self.path, self.node_name, self.base = os.path.abspath(path), node_name, base
        if not os.path.exists(self.path):
            raise UsageError(
                f"--node-config {path} does not exist",
                remedy="give a file or a directory (a mounted ConfigMap) that exists",
            )
        self.selector, self._seen = self._load(), self._signature()
        log.info("node configuration", file=self._file(), selection=self.selector.describe())

    def _file(self) -> Optional[str]:
        if not os.path.isdir(self.path):
            return self.path
        names = (self.node_name, "default")
        return next((p for n in names if os.path.isfile(p := os.path.join(self.path, n))), None)

    def _signature(self) -> object:
        """What changes when kubelet swaps a ConfigMap's files or an admin edits one."""
        file = self._file()
        try:
            st = os.stat(file) if file is not None else None
        except OSError:
            return (file, None)
        return (file, st and (st.st_ino, st.st_mtime_ns, st.st_size))

    def _load(self) -> Selector:
        file = self._file()
        if file is None:
            return self.base
        try:
            with open(file, "rb") as handle:
                data = handle.read(_LIMIT + 1)
            if len(data) > _LIMIT:
                raise UsageError(f"over {_LIMIT} bytes", remedy=_REMEDY)
            return selection_of(data.decode("utf-8", "replace"), self.base)
        except OSError as exc:
            raise UsageError(f"{file}: {exc.strerror}", remedy=_REMEDY) from exc
        except UsageError as err:
            raise UsageError(f"{file}: {err.message}", remedy=err.remedy) from err

    def reload(self) -> bool:
        """Re-read the file if it changed; True when the selection changed. A bad file is
        logged with its remedy and the last good selection stays."""
        seen = self._signature()
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            selector = self._load()
        except UsageError as err:
            log.error(
                "node configuration not applied: the last good one stays",
                error=err.message,
                remedy=err.remedy,
            )
            return False
        if selector == self.selector:
            return False
        log.info("node configuration changed", file=self._file(), selection=selector.describe())
        self.selector = selector
        return True

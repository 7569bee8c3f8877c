"""Paths of the host's own files: /proc/cmdline, /lib/modules, /etc/modprobe.d, /boot.

In a container the host's root is mounted somewhere (``--host-root``, env ``HOST_ROOT``,
usually /host); on bare metal it is /. Like :mod:`vfio_manager.sysfs` for /sys, this is the
only module that builds these paths.
"""

from __future__ import annotations

import os
from typing import Optional

from vfio_manager.sysfs import Sysfs

DEFAULT_HOST_ROOT = "/"


class HostFiles:
    """Read access to the host's kernel command line, modules and configuration."""

    def __init__(self, root: str = DEFAULT_HOST_ROOT, release: Optional[str] = None) -> None:
        self.root = root.rstrip("/") or "/"
        self._release = release

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def release(self) -> str:
        """The running kernel's release: the host's /proc says it, ``uname`` is the fallback."""
        if self._release is None:
            text = Sysfs.read_text(self.path("proc", "sys", "kernel", "osrelease"))
            self._release = text.strip() if text else os.uname().release
        return self._release

    def modules_dir(self) -> str:
        return self.path("lib", "modules", self.release)

    def modules_file(self, name: str) -> str:
        return os.path.join(self.modules_dir(), name)

    def read(self, *parts: str) -> Optional[str]:
        return Sysfs.read_text(self.path(*parts))

    def read_lines(self, path: str) -> list[str]:
        """All lines of a possibly large file (modules.alias); empty when unreadable."""
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                return handle.read().splitlines()
        except OSError:
            return []

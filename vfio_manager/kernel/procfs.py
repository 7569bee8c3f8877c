"""The one module that builds paths under /proc, as :mod:`~vfio_manager.kernel.sysfs` is
for /sys.

The root is injectable (``--proc-root``; in a pod, the host's /proc is seen through
``hostPID: true``), and process IDs and entry names are checked before they become a path,
so a name read from a directory listing can never climb out of it.
"""

from __future__ import annotations

import os

DEFAULT_PROC_ROOT = "/proc"


class Procfs:
    """Paths of the process table and the kernel's tables under one root."""

    def __init__(self, root: str = DEFAULT_PROC_ROOT) -> None:
        self.root = root.rstrip("/") or "/"
        self._prefix = self.root.rstrip("/") + "/"

    def path(self, *parts: str) -> str:
        """A file of the kernel's own tables: ``path("self", "mountinfo")``, ``path("net",
        "route")``."""
        for part in parts:
            if not part or part in {".", ".."} or "/" in part or "\0" in part:
                raise ValueError(f"{part!r} is not a /proc entry name")
        return os.path.join(self.root, *parts)

    def pid_path(self, pid: int, *parts: str) -> str:
        """A file of one process: ``pid_path(42, "fd")``, ``pid_path(42, "stat")``."""
        if pid <= 0:
            raise ValueError(f"{pid} is not a process ID")
        return self.path(str(pid), *parts)

    def pid_dir(self, pid: int) -> str:
        """The folder of one process, built without a join: the scan asks for thousands."""
        if pid <= 0:
            raise ValueError(f"{pid} is not a process ID")
        return f"{self._prefix}{pid}"

    def pids(self) -> list[int]:
        """The process IDs visible here (raises OSError when the root cannot be listed)."""
        return [int(name) for name in os.listdir(self.root) if name.isascii() and name.isdigit()]


__all__ = ["DEFAULT_PROC_ROOT", "Procfs"]

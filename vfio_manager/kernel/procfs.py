"""The one module that builds paths under /proc (``--proc-root``); PIDs and entry names are
checked first, so a name read from a listing can never climb out of it."""

from __future__ import annotations

import os

DEFAULT_PROC_ROOT = "/proc"


class Procfs:
    """Paths of the process table and the kernel's tables under one root."""

    def __init__(self, root: str = DEFAULT_PROC_ROOT) -> None:
        self.root = root.rstrip("/") or "/"
        self._prefix = self.root.rstrip("/") + "/"

    def path(self, *parts: str) -> str:
        """A file of the kernel's own tables: ``path("self", "mountinfo")``."""
        for part in parts:
            if not part or part in {".", ".."} or "/" in part or "\0" in part:
                raise ValueError(f"{part!r} is not a /proc entry name")
        return os.path.join(self.root, *parts)

    def pid_path(self, pid: int, *parts: str) -> str:
        """A file of one process: ``pid_path(42, "fd")``."""
        return self.path(_pid(pid), *parts)

    def pid_dir(self, pid: int) -> str:
        """The folder of one process, built without a join: the scan asks for thousands."""
        return f"{self._prefix}{_pid(pid)}"

    def pids(self) -> list[int]:
        """The process IDs visible here (raises OSError when the root cannot be listed)."""
        return [int(name) for name in os.listdir(self.root) if name.isascii() and name.isdigit()]


def _pid(pid: int) -> str:
    if pid <= 0:
        raise ValueError(f"{pid} is not a process ID")
    return str(pid)

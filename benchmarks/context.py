"""The settings of one benchmark run, shared by every section."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Optional


def default_workdir_parent() -> str:
    """tmpfs when there is one (/dev/shm), so the trees are read at memory speed."""
    shm = "/dev/shm"  # noqa: S108 - only the parent of a mkdtemp() folder
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return shm
    return tempfile.gettempdir()


@dataclass
class Context:
    reps: int
    warmup: int
    sizes: tuple[int, ...]
    workdir: str
    quick: bool = False
    processes: int = 2000
    fds: int = 200
    probe_functions: int = 8
    probe_delay: float = 2.0
    guest_script: Optional[str] = None
    guest_reps: int = 3
    problems: list[str] = field(default_factory=list)  # a section that could not measure

    @property
    def heavy_reps(self) -> int:
        """Runs of commands that take seconds (big nodes, full /proc scans): 1 in quick mode."""
        return 1 if self.quick else self.reps

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

"""The node a run acts on: its roots (sysfs, /dev, host, /proc), state directory and deadlines."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vfio_manager.kernel.procfs import DEFAULT_PROC_ROOT
from vfio_manager.kernel.sysfs import DEFAULT_DEV_ROOT, DEFAULT_SYSFS_ROOT, Sysfs, direct_write
from vfio_manager.safety.statedir import DEFAULT_STATE_DIR

if TYPE_CHECKING:  # imported where used: status reads no host file, takes no lock
    from vfio_manager.host.files import HostFiles
    from vfio_manager.safety.journal import Journal
    from vfio_manager.safety.lock import NodeLock

DEFAULT_WRITE_TIMEOUT = 30.0  # seconds for each function's writes (--timeout)
DEFAULT_LOCK_TIMEOUT = 60.0  # seconds a writing run waits for the node lock (--lock-timeout)
DEFAULT_PARALLEL = 8  # IOMMU groups moved side by side (--parallel)


@dataclass(frozen=True)
class Node:
    sysfs_root: str = DEFAULT_SYSFS_ROOT
    dev_root: str = DEFAULT_DEV_ROOT
    host_root: str = "/"
    proc_root: str = DEFAULT_PROC_ROOT
    state_dir: str = DEFAULT_STATE_DIR
    timeout: float = DEFAULT_WRITE_TIMEOUT
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    writer: str = "process"  # or "thread", for the in-memory fake kernel of the tests
    parallel: int = DEFAULT_PARALLEL

    def sysfs(self, transport: Callable[[str, bytes], None] = direct_write) -> Sysfs:
        return Sysfs(self.sysfs_root, self.dev_root, transport=transport)

    def host_files(self) -> HostFiles:
        from vfio_manager.host.files import HostFiles

        return HostFiles(self.host_root)

    def journal(self, *, readonly: bool = False) -> Journal:
        from vfio_manager.safety.journal import Journal

        return Journal(self.state_dir, readonly=readonly)

    def lock(self, *, sleep: Callable[[float], None] = time.sleep) -> NodeLock:
        """The node lock; ``sleep`` (between polls) may raise to give up waiting."""
        from vfio_manager.safety.lock import NodeLock

        return NodeLock(
            self.state_dir, timeout=self.lock_timeout, proc_root=self.proc_root, sleep=sleep
        )

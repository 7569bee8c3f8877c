"""A pyfakefs file that behaves like a sysfs attribute: shows the kernel's value, acts on writes.

Why a FakeFile subclass and not ``create_file(side_effect=...)``: with a side effect, pyfakefs
really truncates the file at ``open(O_TRUNC)`` and keeps the written bytes afterwards, so a
0-byte write or an open without a write would leave the attribute empty, and the shown value
would have to be patched back after every write. Here the shown value is computed from the
model on every read (``show``), and writes go to ``store`` and never become file contents.

How pyfakefs drives this object (checked on pyfakefs 6.3.2, pinned by
tests/harness_tests/test_sysfs_file.py):

- ``open(path, O_TRUNC)`` calls ``set_contents("")`` *without* an encoding before it builds
  the file wrapper; the wrapper then reads ``byte_contents`` once for its buffer. We answer
  that one read with ``b""`` so the writer's buffer starts empty (a sysfs open ignores
  O_TRUNC: the value does not change).
- every ``os.write`` flushes: ``set_contents(<all bytes written on this descriptor>, enc)``.
  ``_seen`` remembers what the same writer already sent, so a second write on one descriptor
  reaches ``store`` alone, as it would reach the kernel.
- a 0-byte write flushes ``b""``: ignored (the kernel never sees it).

Limits (documented, product code must not rely on them): a reader that keeps its descriptor
open does not see later changes (re-open to re-read, as the product does); writing a
*readable* attribute without O_TRUNC hands ``store`` the written bytes followed by the stale
tail of the old value (only the part before the first newline matters to driver_override).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Callable, Optional, Union

from pyfakefs.fake_file import FakeFile
from pyfakefs.fake_filesystem import FakeFilesystem

Show = Callable[[], bytes]
Store = Callable[[bytes], None]


class KernelFile(FakeFile):
    """One attribute file. ``show=None`` makes it write-only, ``store=None`` read-only."""

    def __init__(
        self,
        name: str,
        filesystem: FakeFilesystem,
        *,
        show: Optional[Show],
        store: Optional[Store] = None,
    ) -> None:
        if show is not None and store is not None:
            mode = 0o644
        elif store is not None:
            mode = 0o200
        else:
            mode = 0o444
        super().__init__(name, st_mode=stat.S_IFREG | mode, contents="", filesystem=filesystem)
        self._fixed_mode = stat.S_IFREG | mode
        self._show = show
        self._store = store
        self._armed = False  # a truncating open is building its wrapper right now
        self._seen = b""  # bytes of the current writer already handed to store

    def __setattr__(self, key: str, value: Any) -> None:
        # pyfakefs' os.open chmods every file it opens (to 0o777 & ~umask); a sysfs attribute
        # keeps the mode the kernel gave it (chmod is ignored here)
        if key == "st_mode" and "_fixed_mode" in self.__dict__:
            value = self._fixed_mode
        super().__setattr__(key, value)

    def peek(self) -> bytes:
        """The shown value, without touching the writer bookkeeping (for the harness itself)."""
        return self._show() if self._show is not None else b""

    @property
    def byte_contents(self) -> bytes:
        self._seen = b""
        if self._armed:
            self._armed = False
            return b""
        return self.peek()

    @property
    def writable(self) -> bool:
        return self._store is not None

    def set_contents(self, contents: Union[str, bytes], encoding: Optional[str] = None) -> bool:
        data = contents.encode(encoding or "utf-8") if isinstance(contents, str) else contents
        if self._store is None:
            # sysfs refuses to open a read-only attribute for writing (kernfs_fop_open)
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        if not data:
            if encoding is None:  # pyfakefs truncating at open(O_TRUNC)
                self._armed = True
            return False
        chunk = data[len(self._seen) :] if self._seen and data.startswith(self._seen) else data
        self._seen = data
        if chunk:
            self._store(chunk)
        return True

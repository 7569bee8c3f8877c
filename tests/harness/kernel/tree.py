"""The pyfakefs primitives the fake kernel builds its files with: folders, kernel files, links.

Building a machine adds thousands of entries; resolving each path from the root through
pyfakefs was most of the cost, so :class:`SysfsTree` looks folders up once and caches them.
"""

from __future__ import annotations

import posixpath
import stat
from typing import Optional, Union

from pyfakefs.fake_file import FakeDirectory, FakeFile
from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness.sysfsfile import KernelFile, Show, Store


def const(text: Union[str, bytes]) -> Show:
    """A show function for a value that never changes."""
    data = text.encode() if isinstance(text, str) else text

    def show() -> bytes:
        return data

    return show


def line(text: str) -> bytes:
    """How sysfs shows one value: the text and a newline."""
    return (text + "\n").encode()


class SysfsTree:
    """Adds and removes entries on a pyfakefs file system, with a cache of folders."""

    def __init__(self, fs: FakeFilesystem) -> None:
        self.fs = fs
        self._dirs: dict[str, FakeDirectory] = {}

    def folder(self, path: str) -> FakeDirectory:
        """The folder at ``path`` (created with its parents if needed), cached."""
        found = self._dirs.get(path)
        if found is not None:
            parent = found.parent_dir() if found.parent_dir is not None else None
            if parent is not None and parent.entries.get(posixpath.basename(path)) is not found:
                found = None  # removed behind the harness' back (os.rmdir on the fake)
        if found is None:
            obj = self.fs.resolve(path) if self.fs.exists(path) else self.fs.create_dir(path)
            if not isinstance(obj, FakeDirectory):
                raise NotADirectoryError(path)
            self._dirs[path] = found = obj
        return found

    def mkdir(self, path: str) -> None:
        self.folder(path)

    def put(self, path: str, obj: FakeFile) -> None:
        """Place ``obj`` at ``path``, replacing whatever was there."""
        folder, name = posixpath.split(path)
        parent = self.folder(folder)
        if name in parent.entries:
            self.remove(path)
        parent.add_entry(obj)

    def file(self, path: str, show: Optional[Show], store: Optional[Store] = None) -> None:
        """A kernel file: reads call ``show``, writes call ``store`` (see sysfsfile.py)."""
        name = posixpath.basename(path)
        self.put(path, KernelFile(name, self.fs, show=show, store=store))

    def link(self, path: str, target: str) -> None:
        # what FakeFilesystem.create_symlink builds, without resolving the path again
        name = posixpath.basename(path)
        self.put(
            path, FakeFile(name, st_mode=stat.S_IFLNK | 0o777, contents=target, filesystem=self.fs)
        )

    def remove(self, path: str) -> None:
        """Remove the entry at ``path`` (a folder with everything in it); absent is fine."""
        folder, name = posixpath.split(path)
        parent = self._dirs.get(folder)
        if parent is None:
            if not self.fs.exists(folder):
                return
            parent = self.folder(folder)
        if name in parent.entries:
            parent.remove_entry(name)
        prefix = path + "/"
        for cached in [p for p in self._dirs if p == path or p.startswith(prefix)]:
            del self._dirs[cached]

    def chardev(self, path: str) -> None:
        """A character device node (/dev/vfio/N); kept if it already exists."""
        folder, name = posixpath.split(path)
        parent = self.folder(folder)
        if name not in parent.entries:
            parent.add_entry(
                FakeFile(name, st_mode=stat.S_IFCHR | 0o600, contents="", filesystem=self.fs)
            )

"""A fake kernel's machine written to the real disk, for the daemon as a separate process.

The in-memory fake kernel (pyfakefs) cannot be seen by another process. For a process test
whose node needs no write (a converged node: a daemon that starts, reports, resyncs and stops
without moving anything) a still picture is enough: :func:`materialize` builds a machine with
the fake kernel, reads every file, directory and link of its tree through ``os`` as the
product would, and writes the same tree under a real directory. Kernel files become regular
files holding what they read as; device nodes (``/dev/vfio/N``) become empty regular files
(the product only checks that they exist). Nothing here is under the real /sys.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pyfakefs.fake_filesystem_unittest import Patcher

from tests.harness import FakeKernel

HOST_ROOT = "/node"
T = TypeVar("T")


@dataclass(frozen=True)
class Roots:
    """The global options that point the CLI at the tree on disk."""

    base: Path

    @property
    def host(self) -> Path:
        return self.base / HOST_ROOT.lstrip("/")

    def args(self, state_dir: Path) -> list[str]:
        return [
            "--sysfs-root",
            str(self.host / "sys"),
            "--dev-root",
            str(self.host / "dev"),
            "--host-root",
            str(self.host),
            "--proc-root",
            str(self.host / "proc"),
            "--state-dir",
            str(state_dir),
        ]


def _collect(root: str) -> tuple[list[str], dict[str, bytes], dict[str, str]]:
    dirs: list[str] = []
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    for here, subdirs, names in os.walk(root, followlinks=False):
        rel_here = posixpath.relpath(here, root)
        dirs.append(rel_here)
        for name in [*subdirs, *names]:
            path = posixpath.join(here, name)
            rel = posixpath.normpath(posixpath.join(rel_here, name))
            if os.path.islink(path):
                links[rel] = os.readlink(path)
            elif name in names:
                try:
                    with open(path, "rb") as handle:
                        files[rel] = handle.read()
                except OSError:  # write-only kernel files, device nodes
                    files[rel] = b""
    return dirs, files, links


def materialize(
    dest: Path, build: Callable[[FakeKernel], T], *, iommu: bool = True
) -> tuple[Roots, T]:
    """Build a machine with ``build(kernel)`` in a private fake filesystem; write it to
    ``dest``. Returns where it is and what ``build`` returned (its BDFs, say)."""
    with Patcher() as patcher:
        assert patcher.fs is not None
        kernel = FakeKernel(
            patcher.fs, release="6.1.0-test", iommu=iommu, host_root=HOST_ROOT, cmdline="ro"
        )
        try:
            made = build(kernel)
            dirs, files, links = _collect(HOST_ROOT)
        finally:
            kernel.close()
    roots = Roots(dest)
    for rel in sorted(dirs):
        (roots.host / rel).mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (roots.host / rel).write_bytes(data)
    for rel, target in links.items():
        (roots.host / rel).symlink_to(target)
    return roots, made

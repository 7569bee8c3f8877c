"""A ConfigMap volume as kubelet lays it out, for a process that reads the mounted directory.

kubelet's atomic writer (not a subPath mount): the keys' files live in a hidden directory
``..<timestamp>``, ``..data`` is a symlink to it, and each key is a symlink ``KEY ->
..data/KEY``. An update writes a new hidden directory, points a temporary symlink at it and
renames that over ``..data`` (one atomic swap), then adds the links of new keys and removes
those of keys that went. :func:`project` makes the first layout, :func:`update` does a swap.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

_generation = itertools.count(1)


def _write_generation(dest: Path, data: Mapping[str, str]) -> str:
    name = f"..2025_01_01_00_00_00.{next(_generation):09d}"
    (dest / name).mkdir()
    for key, value in data.items():
        (dest / name / key).write_text(value, encoding="utf-8")
    return name


def project(data: Mapping[str, str], dest: Path) -> Path:
    """``dest`` as kubelet makes a ConfigMap volume of ``data``."""
    dest.mkdir(parents=True)
    os.symlink(_write_generation(dest, data), dest / "..data")
    for key in data:
        os.symlink(f"..data/{key}", dest / key)
    return dest


def update(data: Mapping[str, str], dest: Path) -> None:
    """Swap ``dest`` to ``data`` the way kubelet does when the ConfigMap changes."""
    old = os.readlink(dest / "..data")
    new = _write_generation(dest, data)
    os.symlink(new, dest / "..data_tmp")
    os.rename(dest / "..data_tmp", dest / "..data")
    for key in data:
        if not (dest / key).is_symlink():
            os.symlink(f"..data/{key}", dest / key)
    for entry in dest.iterdir():
        if not entry.name.startswith("..") and entry.name not in data:
            entry.unlink()
    shutil.rmtree(dest / old)

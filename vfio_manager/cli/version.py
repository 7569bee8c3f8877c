"""What ``--version`` says: the version, the commit and the runtime lock's digest.

A release build writes ``build_info.json`` into the package (tools/release/build); a source
tree asks git and hashes ``requirements/runtime.lock``; what neither knows is ``unknown``.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess
from importlib import resources

from vfio_manager import __version__

# the package as a resource (it may be inside a zipapp), and the checkout it may sit in
PACKAGE = resources.files("vfio_manager")
SOURCE = pathlib.Path(__file__).resolve().parents[2]
BUILD_INFO = "build_info.json"
UNKNOWN = "unknown"


def _from_build() -> dict[str, str]:
    try:
        doc = json.loads(PACKAGE.joinpath(BUILD_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {
        key: str(doc[key]) for key in ("commit", "lock") if isinstance(doc, dict) and key in doc
    }


def _from_source() -> dict[str, str]:
    repo = SOURCE
    found: dict[str, str] = {}
    lock = repo / "requirements" / "runtime.lock"
    if (repo / "pyproject.toml").is_file() and lock.is_file():
        found["lock"] = "sha256:" + hashlib.sha256(lock.read_bytes()).hexdigest()
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return found
    if done.returncode == 0 and done.stdout.strip():
        found["commit"] = done.stdout.strip()
    return found


def describe() -> str:
    """One line: ``vfio-manager, version V (commit C, lock sha256:D)``."""
    info = _from_build() or _from_source()
    commit, lock = info.get("commit", UNKNOWN), info.get("lock", UNKNOWN)
    return f"vfio-manager, version {__version__} (commit {commit}, lock {lock})"

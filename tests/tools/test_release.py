"""tools/release: the zipapp is the same bytes from the same tree, runs the CLI by the name it
is called by, and its installer lays out what docs/bare-metal.md says (the admin's options
kept, the program before kept for a running daemon); the license gate refuses what is not on
its allow-list."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).parents[2]
RELEASE = REPO / "tools" / "release"


def _module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pyz = _module(RELEASE / "pyz.py")


def tree(at: Path) -> Path:
    """The package and the systemd files, as tools/release/build lays them (no dependencies:
    the installer and ``--version`` need none)."""
    shutil.copytree(
        REPO / "vfio_manager", at / "vfio_manager", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in (
        "vfio-manager.service",
        "vfio-manager-bind.service",
        "vfio-manager.env",
        "modules-load.d/vfio-manager.conf",
    ):
        (at / "systemd" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "systemd" / name, at / "systemd" / name)
    return at


def packed(tmp_path: Path, name: str = "vfio-manager-0.1.0.pyz") -> Path:
    out = tmp_path / name
    pyz.pack(tree(tmp_path / f"tree-{name}"), RELEASE / "pyz_main.py", out)
    return out


def install(archive: Path, root: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(archive), "install", "--root", str(root)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    )
    return done.stdout


def test_the_same_tree_packs_to_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000000")
    first, second = packed(tmp_path, "a.pyz"), packed(tmp_path, "b.pyz")
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes().startswith(b"#!/usr/bin/python3 -I\n")
    assert os.access(first, os.X_OK)


def test_the_installer_lays_out_the_program_and_the_units(tmp_path: Path) -> None:
    root = tmp_path / "root"
    archive = packed(tmp_path)
    install(archive, root)
    (program,) = (root / "usr/local/lib/vfio-manager").iterdir()
    assert program.name.startswith("vfio-manager-0.1.0-")
    assert program.suffix == ".pyz"
    assert program.read_bytes() == archive.read_bytes()
    for command in ("vfio-manager", "vfio-manage"):
        link = root / "usr/local/bin" / command
        assert os.readlink(link) == f"../lib/vfio-manager/{program.name}"
    for path, source in {
        "etc/systemd/system/vfio-manager.service": "vfio-manager.service",
        "etc/systemd/system/vfio-manager-bind.service": "vfio-manager-bind.service",
        "etc/modules-load.d/vfio-manager.conf": "modules-load.d/vfio-manager.conf",
        "etc/default/vfio-manager": "vfio-manager.env",
    }.items():
        assert (root / path).read_bytes() == (REPO / "systemd" / source).read_bytes(), path
    version = subprocess.run(
        [sys.executable, str(root / "usr/local/bin/vfio-manager"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.startswith("vfio-manager, version 0.1.0 (commit ")
    usage = subprocess.run(
        [sys.executable, str(root / "usr/local/bin/vfio-manage"), "help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert usage.stdout.startswith("Usage: vfio-manage COMMAND")


def test_an_upgrade_keeps_the_admins_options_and_the_program_before(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(packed(tmp_path, "old.pyz"), root)
    (before,) = os.listdir(root / "usr/local/lib/vfio-manager")
    (root / "etc/default/vfio-manager").write_text("VFIO_MANAGER_ARGS=--vendor 0x8086\n")
    newer = tree(tmp_path / "newer")
    (newer / "vfio_manager" / "build_info.json").write_text('{"commit": "c2", "lock": "l2"}')
    pyz.pack(newer, RELEASE / "pyz_main.py", tmp_path / "new.pyz")
    out = install(tmp_path / "new.pyz", root)
    assert "(the admin's)" in out
    assert (root / "etc/default/vfio-manager").read_text() == "VFIO_MANAGER_ARGS=--vendor 0x8086\n"
    programs = set(os.listdir(root / "usr/local/lib/vfio-manager"))
    assert before in programs
    assert len(programs) == 2
    assert os.readlink(root / "usr/local/bin/vfio-manager") != f"../lib/vfio-manager/{before}"
    # a third install removes the oldest, keeps the one it replaces
    third = tree(tmp_path / "third")
    (third / "vfio_manager" / "build_info.json").write_text('{"commit": "c3", "lock": "l3"}')
    pyz.pack(third, RELEASE / "pyz_main.py", tmp_path / "third.pyz")
    install(tmp_path / "third.pyz", root)
    assert before not in os.listdir(root / "usr/local/lib/vfio-manager")
    assert len(os.listdir(root / "usr/local/lib/vfio-manager")) == 2


@pytest.mark.parametrize(
    ("metadata", "ok"),
    [
        ("License-Expression: MIT OR Apache-2.0\n", True),
        ("Classifier: License :: OSI Approved :: BSD License\n", True),
        ("License-Expression: MIT OR GPL-2.0-only\n", False),
        ("Classifier: License :: OSI Approved :: GNU General Public License v3 (GPLv3)\n", False),
        ("", False),
    ],
)
def test_the_license_gate(tmp_path: Path, metadata: str, ok: bool) -> None:
    info = tmp_path / "foo-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.4\nName: foo\nVersion: 1.0\n{metadata}")
    done = subprocess.run(
        [sys.executable, str(RELEASE / "licenses"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == (0 if ok else 1), done.stdout + done.stderr

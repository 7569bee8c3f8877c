"""``--version``: the version, the commit and the runtime lock's digest."""

from __future__ import annotations

import json
import pathlib
import re

import pytest
from click.testing import CliRunner

from vfio_manager import __version__
from vfio_manager.cli import version
from vfio_manager.cli.main import cli

LINE = re.compile(r"vfio-manager, version (\S+) \(commit (\S+), lock (\S+)\)")


def test_a_release_build_says_what_it_was_built_with(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site-packages" / "vfio_manager"
    package.mkdir(parents=True)
    (package / "build_info.json").write_text(json.dumps({"commit": "c0ffee", "lock": "sha256:ab"}))
    monkeypatch.setattr(version, "PACKAGE", package)
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"vfio-manager, version {__version__} (commit c0ffee, lock sha256:ab)\n"


def test_outside_a_build_and_a_source_tree_both_are_unknown(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "vfio_manager"
    package.mkdir()
    monkeypatch.setattr(version, "PACKAGE", package)
    monkeypatch.setattr(version, "SOURCE", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert (
        version.describe() == f"vfio-manager, version {__version__} (commit unknown, lock unknown)"
    )


def test_a_source_tree_asks_git_and_hashes_the_lock() -> None:
    match = LINE.fullmatch(version.describe())
    assert match is not None
    assert match[1] == __version__
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", match[2])
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", match[3])

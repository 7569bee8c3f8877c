"""tools/fake-sysfs: a snapshot written out as a real directory reads back as that machine.

The container check (tools/container/check) and the Kubernetes manifest check run the product
against such a tree in another mount namespace, where pyfakefs cannot reach. These tests hold
the tree to the same standard as the pyfakefs loader: the snapshot reads back from it
unchanged, and the CLI's read-only commands say the same about it as about the fake kernel.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from pyfakefs.fake_filesystem_unittest import Patcher

from tests.conftest import load_snapshot_files
from tests.harness import FakeKernel, diff_snapshots, take_snapshot
from vfio_manager.cli.main import cli

TOOL = Path(__file__).parents[2] / "tools" / "fake-sysfs"
SNAPSHOTS = load_snapshot_files()  # real disk, before any test starts pyfakefs
NAMES = ("q35-boot", "q35-vfio-loaded", "q35-two-bound", "virtio-vm-no-iommu")


def _tool() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("fake_sysfs", str(TOOL))
    spec = importlib.util.spec_from_loader("fake_sysfs", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


fake_sysfs = _tool()


def _write(name: str, dest: Path) -> Path:
    fake_sysfs.materialise(SNAPSHOTS[name], str(dest))
    return dest


def _selections(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (vendor, class) pair on the machine, so each function is listed by some status."""
    pairs = {(d["attrs"]["vendor"], d["attrs"]["class"]) for d in data["devices"].values()}
    return sorted(pairs)


def _cli(root: str, *args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(
        cli,
        [
            "--sysfs-root",
            f"{root}/sys",
            "--dev-root",
            f"{root}/dev",
            "--host-root",
            root,
            "--log-format",
            "json",
            *args,
        ],
        catch_exceptions=False,
    )
    return result.exit_code, json.loads(result.stdout.replace(root + "/", "/ROOT/"))


def _views(root: str, data: dict[str, Any]) -> dict[str, Any]:
    """What status --json and check --json say per selection, host paths made comparable."""
    views: dict[str, Any] = {}
    pairs = _selections(data)
    for vendor, klass in pairs:
        select = ("--vendor", vendor, "--class", klass)
        views[f"status {vendor} {klass}"] = _cli(root, "status", "--json", *select)
    # check is mostly about the host; two selections cover its per-function items. Details
    # are not compared: the fake kernel invents a /boot/config the snapshot never recorded.
    for vendor, klass in {pairs[0], pairs[-1]}:
        code, report = _cli(root, "check", "--json", "--vendor", vendor, "--class", klass)
        views[f"check {vendor} {klass}"] = (
            code,
            report["ok"],
            [(c["name"], c["ok"]) for c in report["checks"]],
        )
    return views


@pytest.mark.parametrize("name", NAMES)
def test_the_snapshot_reads_back_from_the_tree_unchanged(name: str, tmp_path: Path) -> None:
    root = _write(name, tmp_path / "host")
    tree = SimpleNamespace(
        sys_root=f"{root}/sys",
        host_root=str(root),
        dev_root=f"{root}/dev",
        proc_root=f"{root}/proc",
    )
    assert diff_snapshots(SNAPSHOTS[name], take_snapshot(tree)) == []  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_the_cli_says_the_same_about_the_tree_as_about_the_fake_kernel(
    name: str, tmp_path: Path
) -> None:
    data = SNAPSHOTS[name]
    on_tree = _views(str(_write(name, tmp_path / "host")), data)
    with Patcher() as patcher:
        assert patcher.fs is not None
        kernel = FakeKernel.from_snapshot(patcher.fs, data, host_root="/node")
        on_fake = _views(kernel.host_root, data)
        kernel.close()
    assert on_tree == on_fake


def test_the_two_bound_machine_shows_both_nics_and_their_drivers(tmp_path: Path) -> None:
    root = str(_write("q35-two-bound", tmp_path / "host"))
    code, status = _cli(root, "status", "--json", "--vendor", "0x8086", "--class", "0x020000")
    assert code == 0
    assert [
        (d["bdf"], d["driver"], d["iommu_group"], d["vfio_node"]) for d in status["devices"]
    ] == [
        ("0000:00:05.0", "e1000", 4, None),
        ("0000:03:00.0", "vfio-pci", 9, "/ROOT/dev/vfio/9"),
    ]


def test_it_refuses_an_existing_destination_unless_forced(tmp_path: Path) -> None:
    snapshot = tmp_path / "snap.json"
    snapshot.write_text(json.dumps(SNAPSHOTS["virtio-vm-no-iommu"]), encoding="utf-8")
    dest = tmp_path / "host"
    dest.mkdir()
    (dest / "old").write_text("x", encoding="utf-8")
    with pytest.raises(SystemExit):
        fake_sysfs.main([str(snapshot), str(dest)])
    assert fake_sysfs.main([str(snapshot), str(dest), "--force"]) == 0
    assert not (dest / "old").exists()
    assert os.path.isdir(dest / "sys" / "bus" / "pci" / "devices")


def test_env_names_the_variables_the_cli_reads() -> None:
    assert fake_sysfs.env_for("/fakesys/") == [
        "VFIO_MANAGER_SYSFS_ROOT=/fakesys/sys",
        "VFIO_MANAGER_DEV_ROOT=/fakesys/dev",
        "HOST_ROOT=/fakesys",
    ]

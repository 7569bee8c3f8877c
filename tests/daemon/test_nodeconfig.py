"""--node-config: the environment file's syntax, the keys it may set, a directory of one file
per node (a mounted ConfigMap, whose files kubelet swaps through ``..data``), re-reading on
change, and a bad file that keeps the last good selection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vfio_manager.daemon.nodeconfig import NodeConfig, parse_env_file, selection_of
from vfio_manager.errors import UsageError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.pipeline.selection import Selector

A, B = PciAddress.parse("0000:01:00.0"), PciAddress.parse("0000:02:00.0")
BASE = Selector(device_ids=frozenset({0x1220}), exclude=frozenset({B}))


def test_the_environment_file_syntax() -> None:
    text = """
# a comment
; another
VFIO_MANAGER_BDF=0000:01:00.0,0000:02:00.0
  VFIO_MANAGER_PRODUCT = "RBLN-CA25"
VFIO_MANAGER_EXCLUDE='0000:03:00.0'
VFIO_MANAGER_DEVICE_ID=
VFIO_MANAGER_NUMA_NODE=$HOME
"""
    assert parse_env_file(text) == {
        "VFIO_MANAGER_BDF": "0000:01:00.0,0000:02:00.0",
        "VFIO_MANAGER_PRODUCT": "RBLN-CA25",
        "VFIO_MANAGER_EXCLUDE": "0000:03:00.0",
        "VFIO_MANAGER_DEVICE_ID": "",
        "VFIO_MANAGER_NUMA_NODE": "$HOME",
    }


def test_keys_replace_the_command_lines_and_an_empty_one_clears_it() -> None:
    text = "VFIO_MANAGER_PER_NUMA_NODE=2\nVFIO_MANAGER_EXCLUDE=\nVFIO_MANAGER_DEVICE_ID=0x1250"
    selector = selection_of(text, BASE)
    assert selector.per_numa_node == 2
    assert selector.exclude == frozenset()
    assert selector.device_ids == {0x1250}
    assert (selector.vendor, selector.pci_class) == (BASE.vendor, BASE.pci_class)
    assert selection_of("", BASE) == BASE


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("VFIO_MANAGER_VENDOR=0x8086", "unknown key VFIO_MANAGER_VENDOR"),
        ("VFIO_MANAGER_BDF=03:00", "VFIO_MANAGER_BDF: '03:00' is not a PCI address"),
        ("VFIO_MANAGER_PRODUCT=CA25", "VFIO_MANAGER_PRODUCT: 'CA25' is not a product"),
        ("VFIO_MANAGER_PER_NUMA_NODE=-1", "'-1' is not a count"),
        ("export VFIO_MANAGER_BDF", "line 1: 'export VFIO_MANAGER_BDF' is not KEY=VALUE"),
    ],
)
def test_a_bad_line_names_itself(text: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        selection_of(text, BASE)
    assert message in caught.value.message
    assert caught.value.remedy


def configmap(directory: Path, files: dict[str, str], generation: int) -> None:
    """What kubelet does for a mounted ConfigMap: a new timestamped directory, ``..data``
    swapped to it atomically, each key a link through ``..data``."""
    target = directory / f"..{generation}"
    target.mkdir()
    for name, text in files.items():
        (target / name).write_text(text)
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")
    (directory / "..data_tmp").symlink_to(target.name)
    os.replace(directory / "..data_tmp", directory / "..data")


def test_a_directory_gives_the_nodes_file_else_default(tmp_path: Path) -> None:
    configmap(tmp_path, {"default": "VFIO_MANAGER_BDF=0000:01:00.0"}, 1)
    config = NodeConfig(str(tmp_path), "node-a", BASE)
    assert config.selector.bdfs == {A}
    assert config.reload() is False, "nothing changed"
    configmap(tmp_path, {"default": "VFIO_MANAGER_BDF=0000:01:00.0", "node-a": ""}, 2)
    assert config.reload() is True, "kubelet swapped ..data: the node's own file now"
    assert config.selector == BASE
    configmap(tmp_path, {"default": "VFIO_MANAGER_BDF=0000:01:00.0", "node-a": "#"}, 3)
    assert config.reload() is False, "a new file with the same selection"


def test_a_bad_file_keeps_the_last_good_selection(tmp_path: Path) -> None:
    path = tmp_path / "node.env"
    path.write_text("VFIO_MANAGER_BDF=0000:01:00.0\n")
    config = NodeConfig(str(path), "ignored", BASE)
    path.write_text("VFIO_MANAGER_BDF=0000:01:00.0,nonsense\n")
    assert config.reload() is False
    assert config.selector.bdfs == {A}
    path.unlink()
    assert config.reload() is False, "gone: the last good one stays"
    path.write_text("VFIO_MANAGER_BDF=0000:02:00.0\n")
    assert config.reload() is True
    assert config.selector.bdfs == {B}


def test_a_bad_or_missing_file_at_start_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        NodeConfig(str(tmp_path / "missing"), "node-a", BASE)
    (tmp_path / "bad").write_text("VFIO_MANAGER_VENDOR=1\n")
    with pytest.raises(UsageError, match="unknown key"):
        NodeConfig(str(tmp_path / "bad"), "node-a", BASE)


def test_a_directory_without_a_file_for_the_node_keeps_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "node-b").write_text("VFIO_MANAGER_BDF=0000:02:00.0\n")
    assert NodeConfig(str(tmp_path), "node-a", BASE).selector == BASE


def test_the_vfs_key_sets_the_count_per_product_and_for_every_pf() -> None:
    selector = selection_of("VFIO_MANAGER_VFS=RBLN-CA25=4,2\n", Selector())
    assert selector.vfs == frozenset({("rbln-ca25", 4), ("", 2)})
    assert "4 VFs per RBLN-CA25 PF" in selector.describe()

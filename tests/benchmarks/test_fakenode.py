"""The benchmark's node generator writes a tree the product reads as it reads a kernel's.

Runs the real CLI as a separate process (as the benchmark does) against a 16-endpoint node
in a temp dir: 12 NPUs and 4 other endpoints, each behind a root port, in its own group.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import fakenode

ENDPOINTS = 16


def status(node: fakenode.FakeNode, *selection: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "vfio_manager", *node.cli_args(), "status", "--json", *selection],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    devices: list[dict[str, Any]] = json.loads(done.stdout)["devices"]
    return devices


def test_native_node_lists_every_npu_on_its_native_driver(tmp_path: Path) -> None:
    node = fakenode.generate(str(tmp_path / "node"), ENDPOINTS)
    devices = status(node)
    assert len(node.npus) == 12
    assert [d["bdf"] for d in devices] == [f.bdf for f in node.npus]
    assert {d["driver"] for d in devices} == {"rebellions"}
    assert {d["driver_override"] for d in devices} == {None}
    assert all(d["group_viable"] and d["vfio_node"] is None for d in devices)
    assert [d["iommu_group"] for d in devices] == [f.group for f in node.npus]


def test_other_endpoints_are_seen_by_their_own_selection(tmp_path: Path) -> None:
    node = fakenode.generate(str(tmp_path / "node"), ENDPOINTS)
    nics = status(node, "--vendor", "0x8086", "--class", "0x020000")
    disks = status(node, "--vendor", "0x144d", "--class", "0x010802")
    assert [d["driver"] for d in nics] == ["e1000e", "e1000e"]
    assert [d["driver"] for d in disks] == ["nvme", "nvme"]


@pytest.mark.parametrize("how", ["generated", "converged in place"])
def test_converged_node_has_npus_on_vfio_with_their_group_nodes(tmp_path: Path, how: str) -> None:
    root = str(tmp_path / "node")
    if how == "generated":
        node = fakenode.generate(root, ENDPOINTS, npu_driver=fakenode.VFIO)
    else:
        node = fakenode.converge(fakenode.generate(root, ENDPOINTS))
    devices = status(node)
    assert len(devices) == 12
    assert {d["driver"] for d in devices} == {"vfio-pci"}
    assert {d["driver_override"] for d in devices} == {"vfio-pci"}
    assert [d["vfio_node"] for d in devices] == [
        f"{node.dev_root}/vfio/{f.group}" for f in node.npus
    ]


def test_the_daemon_benchmark_puts_one_npu_back_on_its_native_driver(tmp_path: Path) -> None:
    """Section 6's repair starts from what an admin's rebind leaves: only that NPU changes."""
    from benchmarks.daemon import rebind_native

    node = fakenode.generate(str(tmp_path / "node"), ENDPOINTS, npu_driver=fakenode.VFIO)
    victim = node.npus[3]
    rebind_native(node, victim)
    devices = {d["bdf"]: d for d in status(node)}
    assert devices[victim.bdf]["driver"] == "rebellions"
    assert devices[victim.bdf]["driver_override"] is None
    assert devices[victim.bdf]["vfio_node"] is None
    others = [d for bdf, d in devices.items() if bdf != victim.bdf]
    assert {d["driver"] for d in others} == {"vfio-pci"}
    assert all(d["vfio_node"] for d in others)


def test_vfs_are_listed_beside_their_pf_on_its_native_driver(tmp_path: Path) -> None:
    node = fakenode.generate(str(tmp_path / "node"), 2, other_share=0)
    pf = node.npus[0]
    vfs = fakenode.add_vfs(node, pf, 3)
    devices = {d["bdf"]: d for d in status(node, "--device-id", f"{fakenode.NPU_VF:#x}")}
    assert sorted(devices) == sorted(vf.bdf for vf in vfs)
    assert {d["driver"] for d in devices.values()} == {"rebellions"}
    groups = [d["iommu_group"] for d in devices.values()]
    assert len(set(groups)) == 3
    assert not set(groups) & {f.group for f in node.functions if f not in vfs}
    pf_sysfs = Path(node.sys_root, pf.path)
    assert sorted(p.name for p in pf_sysfs.glob("virtfn*")) == ["virtfn0", "virtfn1", "virtfn2"]
    assert (pf_sysfs / "sriov_numvfs").read_text() == "3\n"
    assert os.readlink(Path(node.sys_root, vfs[0].path, "physfn")) == f"../{pf.bdf}"


def test_store_functions_move_a_function_as_the_kernel_does(tmp_path: Path) -> None:
    node = fakenode.generate(str(tmp_path / "node"), 2, other_share=0)
    moved, kept = node.npus
    store = fakenode.StoreFunctions(node, probe_delay=0.0)
    store.rebind(moved, fakenode.VFIO)
    devices = {d["bdf"]: d for d in status(node)}
    assert devices[moved.bdf]["driver"] == "vfio-pci"
    assert devices[moved.bdf]["driver_override"] == "vfio-pci"
    assert devices[moved.bdf]["vfio_node"] == f"{node.dev_root}/vfio/{moved.group}"
    assert devices[kept.bdf]["driver"] == "rebellions"
    store.rebind(moved, None)  # the override cleared: the native driver probes it again
    devices = {d["bdf"]: d for d in status(node)}
    assert devices[moved.bdf]["driver"] == "rebellions"
    assert devices[moved.bdf]["driver_override"] is None
    assert devices[moved.bdf]["vfio_node"] is None
    assert not Path(node.dev_root, "vfio", str(moved.group)).exists()


@pytest.mark.parametrize(
    ("path", "payload", "code"),
    [
        ("bus/pci/drivers/e1000e/unbind", "{bdf}", errno.ENODEV),  # not its driver
        ("bus/pci/drivers_probe", "0000:77:00.0", errno.ENODEV),  # no such function
        ("bus/pci/drivers/vfio-pci/bind", "{bdf}", errno.EBUSY),  # bound already
        ("bus/pci/devices/{bdf}/remove", "1", errno.EPERM),  # not a file a move writes
    ],
)
def test_store_functions_refuse_as_the_kernel_does(
    tmp_path: Path, path: str, payload: str, code: int
) -> None:
    node = fakenode.generate(str(tmp_path / "node"), 1, other_share=0)
    (npu,) = node.npus
    store = fakenode.StoreFunctions(node, probe_delay=0.0)
    target = os.path.join(node.sys_root, path.format(bdf=npu.bdf))
    with pytest.raises(OSError, match=os.strerror(code)) as caught:
        store.write(target, payload.format(bdf=npu.bdf).encode())
    assert caught.value.errno == code
    assert os.readlink(Path(node.sys_root, npu.path, "driver")).endswith("/rebellions")


def test_the_vf_benchmark_binds_every_vf_and_a_second_run_writes_nothing() -> None:
    """benchmarks/vffiles.py as the vfs section runs it (no delay, 6 VFs over 1 PF)."""
    from benchmarks import vffiles

    found = vffiles.bind(6, 0.0)
    assert (found["exit_code"], found["bound"], found["writes"]) == (0, 6, 18)
    assert (found["second_run_exit_code"], found["second_run_writes"]) == (0, 0)

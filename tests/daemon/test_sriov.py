"""The daemon keeps a PF's VFs on vfio-pci: it creates them at start, creates them again when
the PF's ``sriov_numvfs`` goes back to 0 (a PF reset, a reboot), through the same pipeline;
the VF count comes from ``--vfs`` or the node configuration."""

from __future__ import annotations

import os
import posixpath
import shutil
from typing import Any

import pytest
from pyfakefs.fake_filesystem_unittest import Pause

from tests.daemon.kernel_rig import DAEMON_REAL_STATE
from tests.harness import FakeKernel
from tests.harness.topologies import ca25_pf, npu_node
from vfio_manager.daemon.reconciler import State
from vfio_manager.daemon.service import DaemonOptions
from vfio_manager.pipeline.selection import Selector

PF = "0000:41:00.0"  # an RBLN-CA25 PF that carries up to 4 VFs

pytestmark = pytest.mark.parametrize("fs", DAEMON_REAL_STATE, indirect=True)


@pytest.fixture(autouse=True)
def _state_dir_first(real_state_dir: str) -> str:
    return real_state_dir


def _node(kernel: FakeKernel) -> str:
    (npu,) = npu_node(kernel, count=1)
    ca25_pf(kernel, PF, iommu_group=30)
    return npu


def _write(kernel: FakeKernel, name: str, data: str) -> None:
    """An admin's (or a reset's) change of the PF's SR-IOV attribute."""
    fd = os.open(posixpath.join(kernel.sys_root, "bus/pci/devices", PF, name), os.O_WRONLY)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def _vfs(kernel: FakeKernel) -> list[str]:
    return sorted(b for b in kernel.functions() if kernel.function(b).physfn == PF)


def _on_vfio(kernel: FakeKernel, count: int) -> bool:
    vfs = _vfs(kernel)
    return len(vfs) == count and all(kernel.driver_of(vf) == "vfio-pci" for vf in vfs)


VFS = Selector(vfs=frozenset({("rbln-ca25", 2)}))
# the PFs only by device ID: their VFs (0x1251) come with them, not by the IDs
PFS_ONLY = Selector(device_ids=frozenset({0x1220, 0x1250}), vfs=VFS.vfs)


def test_the_daemon_creates_the_vfs_and_reports_them(
    kernel: FakeKernel, make_kernel_rig: Any
) -> None:
    npu = _node(kernel)
    rig = make_kernel_rig(DaemonOptions(PFS_ONLY))
    rig.start()
    assert _on_vfio(kernel, 2)
    assert kernel.driver_of(PF) == "rebellions"
    assert kernel.driver_of(npu) == "vfio-pci"
    assert rig.state(PF) is State.CONVERGED
    assert [rig.state(vf) for vf in _vfs(kernel)] == [State.CONVERGED] * 2
    assert rig.loop.view.converged
    rig.settle()  # the VFs' own uevents: re-planned, nothing written
    kernel.clear_writes()
    rig.step()  # a resync
    assert kernel.writes == []


def test_vfs_gone_with_a_pf_reset_are_created_again(
    kernel: FakeKernel, make_kernel_rig: Any
) -> None:
    _node(kernel)
    rig = make_kernel_rig(DaemonOptions(VFS, resync_interval=3600))
    rig.start()
    first = _vfs(kernel)
    rig.settle()
    _write(kernel, "sriov_numvfs", "0")  # what a PF reset or a driver reload leaves
    assert _vfs(kernel) == []
    at = rig.clock.now
    rig.settle()
    assert _on_vfio(kernel, 2)
    assert _vfs(kernel) == first
    assert rig.clock.now - at < 60, "told by the VFs' remove uevents, not by a resync"
    assert rig.loop.view.converged


def test_after_a_reboot_a_new_daemon_creates_them_again(
    kernel: FakeKernel, make_kernel_rig: Any, real_state_dir: str
) -> None:
    _node(kernel)
    rig = make_kernel_rig(DaemonOptions(VFS))
    rig.start()
    assert rig.stop() == 0
    # a reboot: the PF comes back without VFs, autoprobe on, and /run is empty
    _write(kernel, "sriov_numvfs", "0")
    _write(kernel, "sriov_drivers_autoprobe", "1")
    with Pause(kernel.fs):  # the state directory is on the real disk
        shutil.rmtree(real_state_dir)
    kernel.clear_writes()
    again = make_kernel_rig(DaemonOptions(VFS))
    again.start()
    assert _on_vfio(kernel, 2)
    assert again.loop.view.converged
    assert [w.path.rsplit("/", 1)[1] for w in kernel.writes if PF in w.path] == [
        "sriov_drivers_autoprobe",
        "sriov_numvfs",
    ]


NODES = "/etc/vfio-manager/nodes"  # on the fake file system, as a mounted ConfigMap


def _configure(text: str) -> None:
    os.makedirs(NODES, exist_ok=True)
    path = posixpath.join(NODES, "default")
    with open(f"{path}.new", "w") as handle:
        handle.write(text)
    os.replace(f"{path}.new", path)


def test_the_node_configuration_changes_the_count_then_takes_the_vfs_away(
    kernel: FakeKernel, make_kernel_rig: Any
) -> None:
    _node(kernel)
    _configure("VFIO_MANAGER_DEVICE_ID=0x1250\nVFIO_MANAGER_VFS=2\n")
    rig = make_kernel_rig(DaemonOptions(node_config=NODES, resync_interval=3600))
    rig.start()
    assert _on_vfio(kernel, 2)
    _configure("VFIO_MANAGER_DEVICE_ID=0x1250\nVFIO_MANAGER_VFS=3\n")
    rig.step_until(lambda: _on_vfio(kernel, 3))
    assert rig.loop.view.converged
    # no VFs any more: they go back, the PF gets its numvfs and autoprobe as found, and is
    # bound itself in the same reconcile, as the selection now says
    _configure("VFIO_MANAGER_DEVICE_ID=0x1250\n")
    rig.step_until(lambda: not _vfs(kernel))
    assert kernel.driver_of(PF) == "vfio-pci"
    assert rig.state(PF) is State.CONVERGED
    with open(
        posixpath.join(kernel.sys_root, "bus/pci/devices", PF, "sriov_drivers_autoprobe")
    ) as f:
        assert f.read().strip() == "1"
    rig.settle()
    assert rig.loop.view.converged

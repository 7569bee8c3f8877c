"""The VFIO device cdev (kernel-facts K25): shown by status, enough for the node wait, and a
process holding it is a holder. The fake kernel plays a kernel with CONFIG_VFIO_DEVICE_CDEV."""

from __future__ import annotations

import json

from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import HOST, VFIO, fake_process, invoke, state


def _devices(kernel: FakeKernel) -> dict[str, dict[str, object]]:
    result = invoke(kernel, "status", "--json")
    assert result.exit_code == 0, result.stderr
    return {d["bdf"]: d for d in json.loads(result.stdout)["devices"]}


def test_status_shows_the_cdev_of_a_function_on_vfio(kernel: FakeKernel) -> None:
    kernel.use_vfio_cdev()
    bound, native = npu_node(kernel, count=2)
    assert invoke(kernel, "bind", bound).exit_code == 0
    devices = _devices(kernel)
    assert devices[bound]["vfio_cdev"] == f"{kernel.dev_root}/vfio/devices/vfio0"
    assert devices[bound]["vfio_node"] == f"{kernel.dev_root}/vfio/{kernel.group_of(bound)}"
    assert devices[native]["vfio_cdev"] is None
    table = invoke(kernel, "status").stdout.splitlines()
    assert any(ln.startswith("BDF") and "VFIO CDEV" in ln for ln in table)
    assert any(ln.startswith(bound) and "/vfio/devices/vfio0" in ln for ln in table)


def test_a_kernel_without_the_cdev_shows_none(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    assert invoke(kernel, "bind", npu).exit_code == 0
    assert _devices(kernel)[npu]["vfio_cdev"] is None


def test_the_node_wait_accepts_the_cdev_where_the_kernel_has_no_group_node(
    kernel: FakeKernel,
) -> None:
    kernel.use_vfio_cdev(group_nodes=False)
    bdfs = npu_node(kernel, count=2)
    result = invoke(kernel, "--timeout", "0.5", "bind-all")
    assert result.exit_code == 0, result.stdout
    assert all(state(kernel, bdf) == VFIO for bdf in bdfs)
    devices = _devices(kernel)
    assert [devices[b]["vfio_node"] for b in bdfs] == [None, None]
    assert all(devices[b]["vfio_cdev"] for b in bdfs)
    kernel.clear_writes()
    again = invoke(kernel, "--timeout", "0.5", "bind-all")
    assert again.exit_code == 0, again.stdout
    assert kernel.writes == []


def test_without_group_node_nor_cdev_the_wait_still_times_out(kernel: FakeKernel) -> None:
    kernel.defer_vfio_nodes()
    (npu,) = npu_node(kernel, count=1)
    result = invoke(kernel, "--timeout", "0.2", "bind", npu)
    assert result.exit_code == 1
    assert "did not appear within" in result.stdout


def test_unbind_refused_while_a_process_holds_the_cdev(
    fs: FakeFilesystem, kernel: FakeKernel
) -> None:
    kernel.use_vfio_cdev()
    held, free = npu_node(kernel, count=2)
    assert invoke(kernel, "bind-all").exit_code == 0
    cdev = str(_devices(kernel)[held]["vfio_cdev"])
    assert cdev.startswith(f"{kernel.dev_root}/vfio/devices/vfio")  # vfioK, K by probe order
    node = cdev.replace(kernel.dev_root, "/dev", 1)
    # as QEMU with iommufd: the cdev and /dev/iommu, no group node (K25)
    fake_process(fs, kernel, 4242, "qemu-system-x86", fds=(node, "/dev/iommu"))
    kernel.clear_writes()
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 1
    assert f"PID 4242 (qemu-system-x86) has {node} open" in result.stdout
    assert state(kernel, held) == VFIO
    assert not [w for w in kernel.writes if held in w.path or w.data.strip() == held]
    assert state(kernel, free) == HOST


def test_the_cdev_goes_with_the_unbind(kernel: FakeKernel) -> None:
    kernel.use_vfio_cdev()
    (npu,) = npu_node(kernel, count=1)
    assert invoke(kernel, "bind", npu).exit_code == 0
    assert kernel.fs.exists(f"{kernel.dev_root}/vfio/devices/vfio0")
    assert invoke(kernel, "unbind", npu).exit_code == 0
    assert not kernel.fs.exists(f"{kernel.dev_root}/vfio/devices/vfio0")
    assert _devices(kernel)[npu]["vfio_cdev"] is None

"""A function whose config space reads all-ones (kernel-facts K27) is refused, never written,
shown by status; one that stops responding half way is reported as such and not undone."""

from __future__ import annotations

import json

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import HOST, VFIO, invoke, named_bdf, pending, state
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.inventory import not_responding, read_topology
from vfio_manager.kernel.sysfs import Sysfs


def writes_for(kernel: FakeKernel, bdf: str) -> list[str]:
    return [w.path for w in kernel.writes if named_bdf(w.path, w.data) == bdf]


def test_a_dead_function_is_refused_and_never_written(kernel: FakeKernel) -> None:
    dead, alive = npu_node(kernel, count=2)
    kernel.stop_responding(dead)
    for args in (("bind-all",), ("bind-all", "--force")):
        result = invoke(kernel, *args)
        assert result.exit_code == 1, result.stdout
        assert f"{dead}" in result.stdout
        assert "not responding: its config space reads all-ones" in result.stdout
        assert f"echo 1 > /sys/bus/pci/devices/{dead}/reset" in result.stdout
        assert "dmesg" in result.stdout
        assert writes_for(kernel, dead) == []
        assert state(kernel, dead) == HOST
    assert state(kernel, alive) == VFIO


def test_a_dead_function_on_vfio_is_not_unbound(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    assert invoke(kernel, "bind", npu).exit_code == 0
    kernel.stop_responding(npu)
    kernel.clear_writes()
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 1
    assert "not responding" in result.stdout
    assert kernel.writes == []
    assert state(kernel, npu) == VFIO


def test_the_dry_run_shows_the_refusal(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    kernel.stop_responding(npu)
    result = invoke(kernel, "bind-all", "--dry-run")
    assert f"{npu}" in result.stdout
    assert "refused: it is not responding" in result.stdout
    assert kernel.writes == []


def test_status_shows_a_dead_function_with_what_to_do(kernel: FakeKernel) -> None:
    dead, alive = npu_node(kernel, count=2)
    kernel.stop_responding(dead)
    doc = json.loads(invoke(kernel, "status", "--json").stdout)
    by_bdf = {d["bdf"]: d for d in doc["devices"]}
    assert by_bdf[dead]["not_responding"] is True
    assert by_bdf[alive]["not_responding"] is False
    (warning,) = doc["warnings"]
    assert warning["bdf"] == dead
    assert "not responding" in warning["message"]
    assert f"/sys/bus/pci/devices/{dead}/reset" in warning["remedy"]
    text = invoke(kernel, "status").stdout
    assert f"warning: {dead}: it is not responding" in text
    assert "remedy: check `dmesg`" in text
    assert kernel.writes == []


def test_a_vendor_of_ffff_or_a_config_of_all_ones_reads_as_not_responding(
    kernel: FakeKernel,
) -> None:
    kernel.add_function("0000:0a:00.0", vendor=0xFFFF, device=0xFFFF, pci_class=0xFFFFFF)
    dead, alive = npu_node(kernel, count=2)
    kernel.stop_responding(dead)
    sysfs = Sysfs(kernel.sys_root, kernel.dev_root)
    functions = read_topology(sysfs).functions
    found = {str(a) for a, f in functions.items() if not_responding(sysfs, f)}
    assert found == {"0000:0a:00.0", dead}
    assert functions[PciAddress.parse(dead)].vendor == 0x1EFF, "sysfs keeps the cached IDs"
    assert alive not in found


def test_one_that_dies_half_way_is_reported_so_and_written_no_more(kernel: FakeKernel) -> None:
    dead, alive = npu_node(kernel, count=2)
    kernel.stop_responding(dead, on_write=f"bus/pci/devices/{dead}/driver_override")
    result = invoke(kernel, "bind-all")
    assert result.exit_code == 1
    assert f"{dead} stopped responding during the transition" in result.stdout
    assert f"echo 1 > /sys/bus/pci/devices/{dead}/reset" in result.stdout
    assert writes_for(kernel, dead) == [f"bus/pci/devices/{dead}/driver_override"]
    assert state(kernel, dead) == ("rebellions", "vfio-pci"), "no undo written either"
    assert pending(kernel) == [dead], "its record stays for a run after a reset"
    assert state(kernel, alive) == VFIO


def test_one_that_dies_at_its_last_write_is_not_reported_bound(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    kernel.stop_responding(npu, on_write="bus/pci/drivers_probe")
    result = invoke(kernel, "bind", npu)
    assert result.exit_code == 1
    assert "stopped responding during the transition" in result.stdout
    assert state(kernel, npu) == VFIO  # the kernel bound it, but it is dead: no undo
    kernel.clear_writes()
    again = invoke(kernel, "bind", npu)
    assert again.exit_code == 1
    assert "not responding" in again.stdout
    assert kernel.writes == []

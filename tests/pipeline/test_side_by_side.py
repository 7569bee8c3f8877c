"""IOMMU groups move side by side; the functions of one group, one after another.

A native driver's probe can take seconds (firmware), and an unbind waits for its remove():
returning 8 NPUs one after another took 8 probes. The engine gives each IOMMU group a lane
of its own. No test here measures time: an unbind is held in the fake kernel until a write
that only another lane makes has happened, so the run succeeds only when the lanes really
run at once, and `--parallel 1` (one after another) shows the same case failing.
"""

from __future__ import annotations

import threading

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import HOST, VFIO, invoke, named_bdf, states
from vfio_manager.safety.writer import WRITE_THREAD


def hold_first_until_second_probed(kernel: FakeKernel, first: str, second: str) -> None:
    """``first``'s unbind blocks in the kernel until drivers_probe is written ``second``."""
    gate = kernel.block_unbind(first)
    kernel.after_write("bus/pci/drivers_probe", gate.set, data=second)


def test_a_return_to_the_host_runs_the_groups_side_by_side(kernel: FakeKernel) -> None:
    first, second = npu_node(kernel, count=2, driver="vfio-pci")
    hold_first_until_second_probed(kernel, first, second)
    result = invoke(kernel, "--timeout", "20", "unbind-all", "--json")
    assert result.exit_code == 0, result.stdout
    assert states(kernel, [first, second]) == {first: HOST, second: HOST}
    assert result.json()["writes"] == 6


def test_one_after_another_when_asked(kernel: FakeKernel) -> None:
    first, second = npu_node(kernel, count=2, driver="vfio-pci")
    hold_first_until_second_probed(kernel, first, second)
    result = invoke(kernel, "--timeout", "1", "--parallel", "1", "unbind-all", "--json")
    kernel.release_all()
    for thread in threading.enumerate():  # the stuck unbind returns, and unlocks, in this test
        if thread.name == WRITE_THREAD:
            thread.join(timeout=30)
    assert result.exit_code == 1, result.stdout
    report = {f["bdf"]: f for f in result.json()["functions"]}
    assert report[first]["outcome"] == "failed"
    assert "did not return" in report[first]["reason"]


def test_a_bind_runs_the_groups_side_by_side(kernel: FakeKernel) -> None:
    first, second = npu_node(kernel, count=2)
    hold_first_until_second_probed(kernel, first, second)
    result = invoke(kernel, "--timeout", "20", "bind-all", "--json")
    assert result.exit_code == 0, result.stdout
    assert states(kernel, [first, second]) == {first: VFIO, second: VFIO}
    report = {f["bdf"]: f["writes"] for f in result.json()["functions"]}
    assert report == {first: 3, second: 3}  # counted per function, not across lanes


def test_functions_of_one_group_move_in_plan_order(kernel: FakeKernel) -> None:
    npus = npu_node(kernel, count=3, driver="vfio-pci", shared_group=True)
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 0, result.stdout
    touched = []
    for write in kernel.writes:
        bdf = named_bdf(write.path, write.data)
        if bdf in npus and bdf not in touched:
            touched.append(bdf)
        if touched and bdf in npus:
            # once a function's writes start, none of another function of the group interleave
            assert bdf == touched[-1], [(w.path, w.data) for w in kernel.writes]
    assert touched == npus

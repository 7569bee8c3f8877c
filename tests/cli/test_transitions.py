"""bind / unbind / bind-all / unbind-all through the CLI against the fake kernel."""

from __future__ import annotations

import errno

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import RunCli


def _override_path(bdf: str) -> str:
    return f"bus/pci/devices/{bdf}/driver_override"


def test_bind_all_moves_every_npu_with_three_writes_each(kernel: FakeKernel, run: RunCli) -> None:
    bdfs = npu_node(kernel, count=2)
    result = run("bind-all")
    assert result.exit_code == 0, result.stderr + result.stdout
    for bdf in bdfs:
        assert kernel.driver_of(bdf) == "vfio-pci"
        assert kernel.override_of(bdf) == "vfio-pci"
    groups = {str(d["iommu_group"]) for d in run("status", "--json").json()["devices"]}
    assert groups <= kernel.vfio_devs()
    paths = [w.path for w in kernel.writes]
    assert len(paths) == 3 * len(bdfs)
    for bdf in bdfs:
        mine = [p for p in paths if bdf in p or p == "bus/pci/drivers_probe"]
        own = [w for w in kernel.writes if w.data.strip() == bdf or bdf in w.path]
        assert [w.path for w in own] == [
            _override_path(bdf),
            "bus/pci/drivers/rebellions/unbind",
            "bus/pci/drivers_probe",
        ], mine


def test_second_bind_all_writes_nothing(kernel: FakeKernel, run: RunCli) -> None:
    npu_node(kernel, count=3)
    assert run("bind-all").exit_code == 0
    kernel.clear_writes()
    again = run("bind-all")
    assert again.exit_code == 0
    assert kernel.writes == []
    assert "3 converged" in again.stdout


def test_unbind_all_returns_to_the_native_driver(kernel: FakeKernel, run: RunCli) -> None:
    bdfs = npu_node(kernel, count=2)
    assert run("bind-all").exit_code == 0
    kernel.clear_writes()
    result = run("unbind-all")
    assert result.exit_code == 0, result.stdout + result.stderr
    for bdf in bdfs:
        assert kernel.driver_of(bdf) == "rebellions"
        assert kernel.override_of(bdf) is None
    assert kernel.vfio_devs() <= {"vfio"}
    assert len(kernel.writes) == 3 * len(bdfs)
    assert [w.data for w in kernel.writes if w.path.endswith("driver_override")] == ["\n"] * 2
    kernel.clear_writes()
    assert run("unbind-all").exit_code == 0
    assert kernel.writes == []


def test_bind_named_function_only(kernel: FakeKernel, run: RunCli) -> None:
    first, second = npu_node(kernel, count=2)
    result = run("bind", first[5:])  # short form 03:00.0
    assert result.exit_code == 0, result.stdout + result.stderr
    assert kernel.driver_of(first) == "vfio-pci"
    assert kernel.driver_of(second) == "rebellions"
    assert run("unbind", first).exit_code == 0
    assert kernel.driver_of(first) == "rebellions"


def test_malformed_bdf_is_usage_error_and_nothing_is_written(
    kernel: FakeKernel, run: RunCli
) -> None:
    npu_node(kernel, count=1)
    for bad in ("../x", "0000:03:00.8", ""):
        result = run("bind", bad)
        assert result.exit_code == 2, bad
    assert kernel.writes == []


def test_unselected_function_is_refused_without_writing(kernel: FakeKernel, run: RunCli) -> None:
    bdfs = npu_node(kernel, count=1)
    status = run("status", "--json", "--vendor", "0x8086", "--class", "0x0200")
    nic = status.json()["devices"][0]["bdf"]
    result = run("bind", bdfs[0], nic)
    assert result.exit_code == 1
    assert "not selected" in result.stderr
    assert "remedy:" in result.stderr
    assert kernel.writes == []
    assert kernel.driver_of(bdfs[0]) == "rebellions"


def test_missing_function_is_refused_without_writing(kernel: FakeKernel, run: RunCli) -> None:
    npu_node(kernel, count=1)
    result = run("bind", "0000:7f:00.0")
    assert result.exit_code == 1
    assert "no PCI function 0000:7f:00.0" in result.stderr
    assert kernel.writes == []


def test_dry_run_prints_the_plan_and_writes_nothing(kernel: FakeKernel, run: RunCli) -> None:
    bdfs = npu_node(kernel, count=2)
    result = run("bind-all", "--dry-run")
    assert result.exit_code == 0
    assert kernel.writes == []
    assert "write 'vfio-pci' to driver_override" in result.stdout
    assert "6 write(s) planned" in result.stdout
    plan = run("bind-all", "--dry-run", "--json").json()
    assert plan["dry_run"] is True
    assert [f["bdf"] for f in plan["functions"]] == bdfs
    assert kernel.writes == []


def test_group_sibling_on_host_driver_is_refused(kernel: FakeKernel, run: RunCli) -> None:
    kernel.add_driver("rebellions", module="rebellions", ids=[(0x1EFF, 0x1220)])
    kernel.add_driver("e1000", module="e1000", ids=[(0x8086, 0x100E)])
    kernel.add_driver("vfio-pci", module="vfio_pci", vfio=True)
    kernel.add_function(
        "0000:05:00.0",
        vendor=0x1EFF,
        device=0x1220,
        pci_class=0x120000,
        driver="rebellions",
        iommu_group=4,
    )
    kernel.add_function(
        "0000:05:00.1",
        vendor=0x8086,
        device=0x100E,
        pci_class=0x020000,
        driver="e1000",
        iommu_group=4,
    )
    result = run("bind-all")
    assert result.exit_code == 1
    assert "0000:05:00.1 on e1000" in result.stdout
    assert kernel.writes == []
    assert kernel.driver_of("0000:05:00.0") == "rebellions"


def test_with_group_peers_binds_selected_sibling(kernel: FakeKernel, run: RunCli) -> None:
    kernel.add_driver("rebellions", module="rebellions", ids=[(0x1EFF, 0x1220), (0x1EFF, 0x1221)])
    kernel.add_driver("vfio-pci", module="vfio_pci", vfio=True)
    for fn, dev in (("0", 0x1220), ("1", 0x1221)):
        kernel.add_function(
            f"0000:05:00.{fn}",
            vendor=0x1EFF,
            device=dev,
            pci_class=0x120000,
            driver="rebellions",
            iommu_group=4,
        )
    refused = run("bind", "0000:05:00.0")
    assert refused.exit_code == 1
    assert kernel.writes == []
    result = run("bind", "0000:05:00.0", "--with-group-peers")
    assert result.exit_code == 0, result.stdout
    assert kernel.driver_of("0000:05:00.0") == kernel.driver_of("0000:05:00.1") == "vfio-pci"


def test_failure_on_one_function_restores_it_and_others_carry_on(
    kernel: FakeKernel, run: RunCli
) -> None:
    first, second = npu_node(kernel, count=2)
    kernel.fail_next_write("bus/pci/drivers/rebellions/unbind", errno.EIO, data=first)
    result = run("bind-all")
    assert result.exit_code == 1
    # the first function hit EIO: back where it started, no stale override
    assert kernel.driver_of(first) == "rebellions"
    assert kernel.override_of(first) is None
    # the second carried on
    assert kernel.driver_of(second) == "vfio-pci"
    assert "EIO" in result.stdout
    assert "restored to rebellions" in result.stdout


def test_transient_ebusy_is_retried_within_the_deadline(kernel: FakeKernel, run: RunCli) -> None:
    (npu,) = npu_node(kernel, count=1)
    kernel.fail_next_write("bus/pci/drivers/rebellions/unbind", errno.EBUSY)
    result = run("bind-all")
    assert result.exit_code == 0, result.stdout
    assert kernel.driver_of(npu) == "vfio-pci"
    unbinds = [w for w in kernel.writes if w.path.endswith("/unbind")]
    assert [w.error for w in unbinds] == [errno.EBUSY, None]


def test_vfio_pci_not_registered_is_caught_before_any_write(
    kernel: FakeKernel, run: RunCli
) -> None:
    (npu,) = npu_node(kernel, count=1, vfio_loaded=False)
    result = run("bind-all", "--no-load-modules")
    assert result.exit_code == 3
    assert kernel.writes == []
    assert kernel.driver_of(npu) == "rebellions"


def test_function_disappearing_between_steps(kernel: FakeKernel, run: RunCli) -> None:
    first, second = npu_node(kernel, count=2)
    kernel.remove_function_on_write(_override_path(first), first)
    result = run("bind-all")
    assert result.exit_code == 1
    assert "disappeared" in result.stdout
    assert kernel.driver_of(second) == "vfio-pci"


def test_json_report_and_structured_logs(kernel: FakeKernel, run: RunCli) -> None:
    bdfs = npu_node(kernel, count=1)
    result = run("bind-all", "--json")
    report = result.json()
    assert report["ok"] is True
    assert report["functions"][0]["outcome"] == "changed"
    assert report["functions"][0]["writes"] == 3
    steps = [(e["bdf"], e["step"], e["outcome"]) for e in result.log_events() if "step" in e]
    assert (bdfs[0], "set-override", "done") in steps
    assert (bdfs[0], "probe", "done") in steps


def test_help_documents_exit_codes(run: RunCli) -> None:
    result = run("--help")
    assert "Exit codes" in result.stdout
    assert "3  the host is not ready" in result.stdout

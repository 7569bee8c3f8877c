"""Plans are pure: topology in, steps out. These tests need no filesystem at all."""

from __future__ import annotations

from typing import Optional

from vfio_manager.host.driver_choice import HostTarget
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import STAY_UNBOUND
from vfio_manager.kernel.model import PciFunction, Topology
from vfio_manager.pipeline.plan import Action, Step, plan_to_host, plan_to_vfio, restore_steps
from vfio_manager.pipeline.selection import Selector

NPU = {"vendor": 0x1EFF, "device": 0x1220, "pci_class": 0x120000}


def fn(
    bdf: str,
    *,
    group: Optional[int],
    driver: Optional[str] = None,
    override: Optional[str] = None,
    **ids: int,
) -> PciFunction:
    values = {**NPU, **ids}
    return PciFunction(
        PciAddress.parse(bdf),
        values["vendor"],
        values["device"],
        values["pci_class"],
        driver=driver,
        driver_override=override,
        iommu_group=group,
    )


def topo(*functions: PciFunction, nodes: frozenset[str] = frozenset()) -> Topology:
    groups: dict[int, list[PciAddress]] = {}
    for f in functions:
        if f.iommu_group is not None:
            groups.setdefault(f.iommu_group, []).append(f.address)
    return Topology(
        {f.address: f for f in functions}, {n: tuple(sorted(m)) for n, m in groups.items()}, nodes
    )


def actions(topology: Topology, *targets: PciFunction, **kwargs: object) -> list[list[Action]]:
    plan = plan_to_vfio(topology, targets, selector=Selector(), **kwargs)  # type: ignore[arg-type]
    return [[s.action for s in e.steps] for e in plan.entries]


def test_bind_sets_override_before_unbinding_then_probes_verifies_and_waits() -> None:
    npu = fn("0000:03:00.0", group=9, driver="rebellions")
    plan = plan_to_vfio(topo(npu), [npu], selector=Selector())
    (entry,) = plan.entries
    assert [s.action for s in entry.steps] == [
        Action.SET_OVERRIDE,
        Action.UNBIND,
        Action.PROBE,
        Action.VERIFY_DRIVER,
        Action.WAIT_VFIO_NODE,
    ]
    assert entry.steps[0].driver == "vfio-pci"
    assert entry.steps[1].driver == "rebellions"
    assert entry.write_count == 3


def test_driverless_function_needs_no_unbind() -> None:
    npu = fn("0000:03:00.0", group=9)
    assert actions(topo(npu), npu) == [
        [Action.SET_OVERRIDE, Action.PROBE, Action.VERIFY_DRIVER, Action.WAIT_VFIO_NODE]
    ]


def test_converged_function_gets_an_empty_plan() -> None:
    npu = fn("0000:03:00.0", group=9, driver="vfio-pci", override="vfio-pci")
    plan = plan_to_vfio(topo(npu, nodes=frozenset({"9", "vfio"})), [npu], selector=Selector())
    assert plan.entries[0].converged
    assert plan.write_count == 0


def test_bound_without_override_only_sets_the_override() -> None:
    npu = fn("0000:03:00.0", group=9, driver="vfio-pci")
    assert actions(topo(npu, nodes=frozenset({"9"})), npu) == [
        [Action.SET_OVERRIDE, Action.WAIT_VFIO_NODE]
    ]


def test_sibling_on_host_driver_refuses_the_group() -> None:
    npu = fn("0000:05:00.0", group=4, driver="rebellions")
    nic = fn(
        "0000:05:00.1",
        group=4,
        driver="virtio-pci",
        vendor=0x1AF4,
        device=0x1000,
        pci_class=0x020000,
    )
    plan = plan_to_vfio(topo(npu, nic), [npu], selector=Selector())
    (entry,) = plan.entries
    assert entry.steps == ()
    assert entry.refusal is not None
    assert "0000:05:00.1 on virtio-pci" in entry.refusal
    assert "--with-group-peers" in (entry.remedy or "")


def test_with_group_peers_binds_a_selected_sibling_too() -> None:
    a = fn("0000:05:00.0", group=4, driver="rebellions")
    b = fn("0000:05:00.1", group=4, driver="rebellions", device=0x1221)
    plan = plan_to_vfio(topo(a, b), [a], selector=Selector(), with_group_peers=True)
    assert [e.function.bdf for e in plan.entries] == ["0000:05:00.0", "0000:05:00.1"]
    assert all(e.refusal is None and e.write_count == 3 for e in plan.entries)


def test_with_group_peers_never_takes_an_unselected_unnamed_sibling() -> None:
    npu = fn("0000:05:00.0", group=4, driver="rebellions")
    nic = fn(
        "0000:05:00.1", group=4, driver="e1000", vendor=0x8086, device=0x100E, pci_class=0x020000
    )
    plan = plan_to_vfio(topo(npu, nic), [npu], selector=Selector(), with_group_peers=True)
    assert [e.function.bdf for e in plan.entries] == ["0000:05:00.0"]
    assert plan.entries[0].refusal is not None


def test_named_sibling_is_taken_with_group_peers() -> None:
    npu = fn("0000:05:00.0", group=4, driver="rebellions")
    nic = fn(
        "0000:05:00.1", group=4, driver="e1000", vendor=0x8086, device=0x100E, pci_class=0x020000
    )
    plan = plan_to_vfio(
        topo(npu, nic), [npu], selector=Selector(), with_group_peers=True, named=[nic.address]
    )
    assert [e.refusal for e in plan.entries] == [None, None]


def test_two_selected_members_of_one_group_move_together_without_the_flag() -> None:
    a = fn("0000:05:00.0", group=4, driver="rebellions")
    b = fn("0000:05:00.1", group=4, driver="rebellions")
    plan = plan_to_vfio(topo(a, b), [a, b], selector=Selector())
    assert all(e.refusal is None for e in plan.entries)


def test_bridge_on_host_driver_blocks_and_is_never_taken() -> None:
    bridge = fn(
        "0000:01:00.0", group=8, driver="shpchp", vendor=0x1B36, device=0x000E, pci_class=0x060400
    )
    npu = fn("0000:02:02.0", group=8)
    plan = plan_to_vfio(
        topo(bridge, npu),
        [npu],
        selector=Selector(vendor=None, pci_class=None),
        with_group_peers=True,
    )
    assert [e.function.bdf for e in plan.entries] == ["0000:02:02.0"]
    assert "bridge 0000:01:00.0 on shpchp" in (plan.entries[0].refusal or "")


def test_pcieport_and_unbound_members_keep_the_group_viable() -> None:
    port = fn("0000:00:07.0", group=6, driver="pcieport", pci_class=0x060400)
    npu = fn("0000:03:00.0", group=6, driver="rebellions")
    idle = fn("0000:03:00.1", group=6, vendor=0x8086)
    plan = plan_to_vfio(topo(port, npu, idle), [npu], selector=Selector())
    assert plan.entries[0].refusal is None


def test_refusals_for_what_vfio_pci_would_refuse() -> None:
    no_group = fn("0000:03:00.0", group=None, driver="rebellions")
    bridge = fn("0000:04:00.0", group=3, pci_class=0x060400)
    pf = PciFunction(
        PciAddress.parse("0000:05:00.0"),
        0x1EFF,
        0x1220,
        0x120000,
        driver="rebellions",
        iommu_group=7,
        sriov_totalvfs=4,
        sriov_numvfs=2,
    )
    plan = plan_to_vfio(topo(no_group, bridge, pf), [no_group, bridge, pf], selector=Selector())
    reasons = [e.refusal or "" for e in plan.entries]
    assert "no IOMMU group" in reasons[0]
    assert "bridge" in reasons[1]
    assert "2 VFs enabled" in reasons[2]
    assert all(e.steps == () for e in plan.entries)


def test_refused_member_refuses_its_group_mates() -> None:
    a = fn("0000:05:00.0", group=4, driver="rebellions")
    b = PciFunction(
        PciAddress.parse("0000:05:00.1"),
        0x1EFF,
        0x1220,
        0x120000,
        driver="rebellions",
        iommu_group=4,
        sriov_totalvfs=4,
        sriov_numvfs=1,
    )
    plan = plan_to_vfio(topo(a, b), [a, b], selector=Selector())
    assert all(e.refusal for e in plan.entries)
    assert "0000:05:00.1" in (plan.entries[0].refusal or "")


def test_unbind_clears_override_first_then_unbinds_probes_and_verifies_native() -> None:
    npu = fn("0000:03:00.0", group=9, driver="vfio-pci", override="vfio-pci")
    plan = plan_to_host(topo(npu), [npu], host_target_for=lambda _f: HostTarget("rebellions"))
    assert [(s.action, s.driver) for s in plan.entries[0].steps] == [
        (Action.CLEAR_OVERRIDE, None),
        (Action.UNBIND, "vfio-pci"),
        (Action.PROBE, None),
        (Action.VERIFY_DRIVER, "rebellions"),
    ]


def test_unbind_of_a_host_function_is_converged() -> None:
    npu = fn("0000:03:00.0", group=9, driver="rebellions")
    plan = plan_to_host(topo(npu), [npu], host_target_for=lambda _f: HostTarget("rebellions"))
    assert plan.entries[0].converged


def test_stale_override_on_driverless_function_is_repaired() -> None:
    npu = fn("0000:03:00.0", group=9, override="vfio-pci")
    plan = plan_to_host(topo(npu), [npu], host_target_for=lambda _f: HostTarget("rebellions"))
    assert [s.action for s in plan.entries[0].steps] == [
        Action.CLEAR_OVERRIDE,
        Action.PROBE,
        Action.VERIFY_DRIVER,
    ]


def test_driverless_function_with_no_known_native_driver_is_left_alone() -> None:
    npu = fn("0000:03:00.0", group=9)
    plan = plan_to_host(topo(npu), [npu], host_target_for=lambda _f: HostTarget(None))
    assert plan.entries[0].converged


def test_driverless_function_with_loaded_native_driver_is_probed() -> None:
    npu = fn("0000:03:00.0", group=9)
    plan = plan_to_host(topo(npu), [npu], host_target_for=lambda _f: HostTarget("rebellions"))
    assert [s.action for s in plan.entries[0].steps] == [Action.PROBE, Action.VERIFY_DRIVER]


def host_plan(function: PciFunction, target: HostTarget) -> list[tuple[Action, Optional[str]]]:
    plan = plan_to_host(topo(function), [function], host_target_for=lambda _f: target)
    return [(s.action, s.driver) for s in plan.entries[0].steps]


def test_a_driver_the_probe_does_not_pick_is_named_in_the_override_for_the_probe() -> None:
    npu = fn("0000:03:00.0", group=9, driver="vfio-pci", override="vfio-pci")
    assert host_plan(npu, HostTarget("pci-stub", None, probe_picks=False)) == [
        (Action.SET_OVERRIDE, "pci-stub"),
        (Action.UNBIND, "vfio-pci"),
        (Action.PROBE, None),
        (Action.VERIFY_DRIVER, "pci-stub"),
        (Action.CLEAR_OVERRIDE, None),
    ]


def test_an_override_naming_the_driver_needs_no_extra_write() -> None:
    npu = fn("0000:03:00.0", group=9, driver="vfio-pci", override="vfio-pci")
    for picks in (True, False):
        assert host_plan(npu, HostTarget("pci-stub", "pci-stub", probe_picks=picks)) == [
            (Action.SET_OVERRIDE, "pci-stub"),
            (Action.UNBIND, "vfio-pci"),
            (Action.PROBE, None),
            (Action.VERIFY_DRIVER, "pci-stub"),
        ]


def test_found_unbound_with_an_override_gets_the_override_back_and_no_probe() -> None:
    npu = fn("0000:03:00.0", group=9, driver="vfio-pci", override="vfio-pci")
    assert host_plan(npu, HostTarget(STAY_UNBOUND, "pci-stub")) == [
        (Action.SET_OVERRIDE, "pci-stub"),
        (Action.UNBIND, "vfio-pci"),
        (Action.VERIFY_DRIVER, STAY_UNBOUND),
    ]


def test_a_function_on_the_host_is_left_as_it_is_whatever_the_target() -> None:
    for driver, override in (("pci-stub", None), (None, "pci-stub"), ("rebellions", "x")):
        npu = fn("0000:03:00.0", group=9, driver=driver, override=override)
        assert host_plan(npu, HostTarget("rebellions", None, probe_picks=False)) == []


def test_restore_steps_pin_only_when_the_probe_is_not_trusted() -> None:
    npu = fn("0000:03:00.0", group=9, driver=None, override="vfio-pci")
    trusted = restore_steps(npu, "rebellions", None)
    pinned = restore_steps(npu, "rebellions", None, probe_picks=False)
    assert [s.action for s in trusted] == [
        Action.CLEAR_OVERRIDE,
        Action.PROBE,
        Action.VERIFY_DRIVER,
    ]
    assert pinned[0] == Step(Action.SET_OVERRIDE, "rebellions")
    assert pinned[-1] == Step(Action.CLEAR_OVERRIDE)


def test_plan_json_is_serialisable_and_complete() -> None:
    import json

    npu = fn("0000:03:00.0", group=9, driver="rebellions")
    data = plan_to_vfio(topo(npu), [npu], selector=Selector()).to_json()
    assert json.loads(json.dumps(data))["writes"] == 3
    assert data["functions"][0]["steps"][0] == {
        "action": "set-override",
        "driver": "vfio-pci",
        "group": None,
    }

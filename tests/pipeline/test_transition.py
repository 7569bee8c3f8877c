"""What the daemon asks of the one write pipeline: exclusions, a scope, refusal kinds.

``exclude`` keeps functions out of every stage (targets, group peers, journal settlement),
``scope`` re-plans only the IOMMU groups a uevent named, and each refusal says its kind so the
daemon can tell a held function from a blocked group.
"""

from __future__ import annotations

from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness import FakeKernel
from tests.harness.topologies import HOST_NIC, npu_node
from tests.support import fake_process, native_node, node_of
from vfio_manager.host.modules import RunResult
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import Direction
from vfio_manager.kernel.inventory import read_topology
from vfio_manager.pipeline.plan import RefusalKind
from vfio_manager.pipeline.selection import Selector, in_groups_of
from vfio_manager.pipeline.transition import TransitionRequest, TransitionResult, run_transition


def to_vfio(kernel: FakeKernel, **fields: object) -> TransitionResult:
    request = TransitionRequest(
        Selector(),
        Direction.TO_VFIO,
        runner=lambda argv: RunResult(*kernel.run_modprobe(argv)),
        **fields,  # type: ignore[arg-type]
    )
    return run_transition(node_of(kernel), request)


def planned(result: TransitionResult) -> list[str]:
    return [e.function.bdf for e in result.plan.entries]


def test_an_excluded_function_is_never_planned(kernel: FakeKernel) -> None:
    first, second = npu_node(kernel, count=2)
    result = to_vfio(kernel, exclude=frozenset({PciAddress.parse(first)}))
    assert planned(result) == [second]
    assert kernel.driver_of(first) == "rebellions"
    assert kernel.driver_of(second) == "vfio-pci"
    assert not [w for w in kernel.writes if first in w.path or w.data.strip() == first]


def test_an_excluded_peer_blocks_its_group_instead_of_being_moved(kernel: FakeKernel) -> None:
    first, second = npu_node(kernel, count=2, shared_group=True)
    result = to_vfio(kernel, exclude=frozenset({PciAddress.parse(first)}), with_group_peers=True)
    (entry,) = result.plan.entries
    assert entry.function.bdf == second
    assert entry.refusal_kind is RefusalKind.GROUP
    assert first in (entry.refusal or "")
    assert kernel.writes == []


def test_the_journal_record_of_an_excluded_function_is_kept(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    node = node_of(kernel)
    function = read_topology(node.sysfs()).functions[PciAddress.parse(npu)]
    node.journal().record_start(function, Direction.TO_VFIO)  # a bind killed half way
    result = to_vfio(kernel, exclude=frozenset({PciAddress.parse(npu)}))
    assert result.plan.entries == ()
    assert f"journal: {npu}: record kept, the function is excluded" in result.notes
    assert [e.bdf for e in node.journal().pending()] == [npu]
    assert kernel.writes == []


def test_a_scope_re_plans_whole_iommu_groups(kernel: FakeKernel) -> None:
    first, second = npu_node(kernel, count=2, shared_group=True)
    result = to_vfio(kernel, scope=frozenset({PciAddress.parse(first)}))
    assert planned(result) == [first, second]
    assert kernel.driver_of(second) == "vfio-pci"


def test_a_scope_leaves_other_groups_alone(kernel: FakeKernel) -> None:
    first, second = npu_node(kernel, count=2)
    result = to_vfio(kernel, scope=frozenset({PciAddress.parse(second)}))
    assert planned(result) == [second]
    assert kernel.driver_of(first) == "rebellions"
    assert result.topology is not None
    assert PciAddress.parse(first) in result.topology.functions, "the result tells what it read"


def test_a_scope_naming_unselected_or_gone_functions_plans_nothing(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    scope = frozenset({PciAddress.parse(HOST_NIC), PciAddress.parse("0000:7f:00.0")})
    result = to_vfio(kernel, scope=scope)
    assert result.plan.entries == ()
    assert result.report is None
    assert kernel.driver_of(HOST_NIC) == "e1000e"


def test_in_groups_of_adds_peers_and_drops_absent_addresses(kernel: FakeKernel) -> None:
    first, second = npu_node(kernel, count=2, shared_group=True)
    topology = read_topology(node_of(kernel).sysfs())
    found = in_groups_of(topology, [PciAddress.parse(first), PciAddress.parse("0000:7f:00.0")])
    assert found == {PciAddress.parse(first), PciAddress.parse(second)}


def test_refusals_say_their_kind(fs: FakeFilesystem, kernel: FakeKernel) -> None:
    first, second = npu_node(kernel, count=2)
    native_node(fs, kernel, first)
    fake_process(fs, kernel, 777, "rbln-smi", fds=("/dev/rbln0",))
    result = to_vfio(kernel)
    kinds = {e.function.bdf: e.refusal_kind for e in result.plan.entries}
    assert kinds == {first: RefusalKind.IN_USE, second: None}
    assert kernel.driver_of(second) == "vfio-pci"


def test_a_pf_with_vfs_is_a_kernel_refusal(kernel: FakeKernel) -> None:
    npu_node(kernel, count=0)
    kernel.add_function(
        "0000:41:00.0",
        vendor=0x1EFF,
        device=0x1220,
        pci_class=0x120000,
        iommu_group=30,
        driver="rebellions",
        sriov_totalvfs=4,
    )
    kernel.add_vfs("0000:41:00.0", 2)
    result = to_vfio(kernel, scope=frozenset({PciAddress.parse("0000:41:00.0")}))
    (entry,) = [e for e in result.plan.entries if e.function.bdf == "0000:41:00.0"]
    assert entry.refusal_kind is RefusalKind.KERNEL

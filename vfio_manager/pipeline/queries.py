"""The read-only commands, ``status`` and ``check``: read once and select, no lock, no write."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from vfio_manager.host.dynamic_ids import DynamicId, dynamic_ids
from vfio_manager.kernel.drivers import is_vfio_driver
from vfio_manager.kernel.inventory import (
    NOT_RESPONDING,
    not_responding,
    not_responding_remedy,
    read_topology,
)
from vfio_manager.kernel.model import PciFunction, Topology
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.kernel.viability import group_viable
from vfio_manager.pipeline.node import Node
from vfio_manager.pipeline.selection import Selector, selected_functions

if TYPE_CHECKING:
    from vfio_manager.host.modules import Runner
    from vfio_manager.host.preflight import Preflight
    from vfio_manager.host.summary import HostSummary


def device_record(topology: Topology, function: PciFunction, sysfs: Sysfs) -> dict[str, Any]:
    """The ``status --json`` record of one function (JSON nulls for absent values)."""
    node = topology.vfio_dev(function)
    return {
        "bdf": function.bdf,
        "vendor": f"0x{function.vendor:04x}",
        "device": f"0x{function.device:04x}",
        "class": f"0x{function.pci_class:06x}",
        "product": function.product,
        "driver": function.driver,
        "driver_override": function.driver_override,
        "iommu_group": function.iommu_group,
        "group_viable": group_viable(topology, function),
        "vfio_node": sysfs.vfio_dev_path(int(node)) if node is not None else None,
        "vfio_cdev": topology.vfio_cdev(function),
        "not_responding": not_responding(sysfs, function),
        "numa_node": function.numa_node,
        "sriov": function.sriov_role,
        "sriov_numvfs": function.sriov_numvfs,
        "vfs": [str(a) for a in sysfs.vfs_of(function.address)] if function.can_sriov else None,
        "physfn": str(function.physfn) if function.physfn is not None else None,
    }


@dataclass(frozen=True)
class StatusResult:
    selector: Selector
    records: list[dict[str, Any]]
    host: Optional[HostSummary] = None
    dynamic_ids: tuple[DynamicId, ...] = ()  # selected functions a vfio driver holds by ID

    @property
    def all_on_vfio(self) -> bool:
        return all(is_vfio_driver(r["driver"]) for r in self.records)

    @property
    def warnings(self) -> list[dict[str, str]]:
        """``{bdf, message, remedy}`` of each dynamic ID and each function that reads all-ones."""
        dead = [r["bdf"] for r in self.records if r["not_responding"]]
        return [found.to_json() for found in self.dynamic_ids] + [
            {
                "bdf": bdf,
                "message": f"{bdf}: {NOT_RESPONDING}",
                "remedy": not_responding_remedy(bdf),
            }
            for bdf in dead
        ]


def status(node: Node, selector: Selector, *, holders: bool = False) -> StatusResult:
    """The selected functions' records; ``holders`` adds who holds each (one /proc scan)."""
    from vfio_manager.host.summary import HostSummary

    sysfs = node.sysfs()
    # the others: only what groups ask; no subsystem IDs or modalias (no driver is chosen)
    wanted = None if selector.vfs else selector.may_match  # a PF's VFs need their physfn
    topology = read_topology(sysfs, wanted=wanted, driver_ids=False, ids_from_modalias=True)
    functions = selected_functions(topology, selector)
    records = [device_record(topology, f, sysfs) for f in functions]
    if holders:
        from vfio_manager.safety.holders import find_holders

        found = find_holders(sysfs, node.proc_root, functions)
        for function, record in zip(functions, records):
            record["holders"] = [h.to_json() for h in found.get(function.address, [])]
    return StatusResult(selector, records, HostSummary.read(sysfs), tuple(dynamic_ids(functions)))


@dataclass(frozen=True)
class CheckResult:
    selector: Selector
    preflight: Preflight
    functions: int
    host_root: str
    release: str


def check(
    node: Node, selector: Selector, *, load_modules: bool = False, runner: Optional[Runner] = None
) -> CheckResult:
    """The host readiness checklist for the selected functions; loads modules only if asked."""
    from vfio_manager.host import preflight
    from vfio_manager.host.modalias import AliasTable

    sysfs = node.sysfs()
    topology = read_topology(sysfs)
    functions = selected_functions(topology, selector)
    host = node.host_files()
    result = preflight.run(
        sysfs,
        host,
        functions,
        aliases=AliasTable.load(host) if functions else None,
        driver_modules=topology.driver_modules,
        selection=selector.describe(),
        load=load_modules,
        runner=runner,
    )
    return CheckResult(selector, result, len(functions), host.root, host.release)

"""What each command does, between the CLI (argv, exit codes) and the engine (sysfs writes).

Each function reads the topology once, computes, and returns a result object that knows how
to render itself; the CLI only prints those lines and exits with the result's code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from vfio_manager import render
from vfio_manager.address import PciAddress
from vfio_manager.errors import ExitCode
from vfio_manager.inventory import read_topology
from vfio_manager.selection import Selector
from vfio_manager.sysfs import Sysfs
from vfio_manager.targets import named_functions, selected_functions
from vfio_manager.viability import is_vfio_driver

if TYPE_CHECKING:
    from vfio_manager.cli import Settings
    from vfio_manager.engine import Report
    from vfio_manager.plan import Plan


def _sysfs(settings: Settings) -> Sysfs:
    return Sysfs(settings.sysfs_root, settings.dev_root)


@dataclass(frozen=True)
class StatusResult:
    selector: Selector
    records: list[dict[str, Any]]

    @property
    def all_on_vfio(self) -> bool:
        return all(is_vfio_driver(r["driver"]) for r in self.records)

    def table_lines(self) -> list[str]:
        if not self.records:
            return [
                f"No PCI function matches {self.selector.describe()}: "
                "no Rebellions NPU is present on this host (nothing to do)."
            ]
        return render.status_lines(self.records)

    def json_lines(self) -> list[str]:
        return [render.to_json({"devices": self.records})]


def status(settings: Settings, selector: Selector) -> StatusResult:
    """Read-only view of the selected functions."""
    sysfs = _sysfs(settings)
    topology = read_topology(sysfs)
    records = [
        render.device_record(topology, f, sysfs) for f in selected_functions(topology, selector)
    ]
    return StatusResult(selector, records)


@dataclass(frozen=True)
class TransitionResult:
    selector: Selector
    plan: Plan
    report: Optional[Report]

    @property
    def exit_code(self) -> ExitCode:
        if self.report is not None:
            return self.report.exit_code
        refused = any(entry.refusal for entry in self.plan.entries)
        return ExitCode.FAILED if refused else ExitCode.OK

    def text_lines(self) -> list[str]:
        if not self.plan.entries:
            return [f"No PCI function matches {self.selector.describe()}: nothing to do."]
        if self.report is None:
            return render.plan_lines(self.plan)
        return render.report_lines(self.report)

    def json_lines(self) -> list[str]:
        if self.report is None:
            return [render.to_json({"dry_run": True, **self.plan.to_json()})]
        return [render.to_json(self.report.to_json())]


def transition(
    settings: Settings,
    selector: Selector,
    named: Sequence[PciAddress],
    *,
    to_vfio: bool,
    dry_run: bool = False,
    with_group_peers: bool = False,
) -> TransitionResult:
    """Plan and (unless ``dry_run``) apply a move of the targets to vfio or back to the host."""
    from vfio_manager.drivers import DriverResolver
    from vfio_manager.engine import Engine
    from vfio_manager.hostfs import HostFiles
    from vfio_manager.kernel import Kernel
    from vfio_manager.plan import plan_to_host, plan_to_vfio

    sysfs = _sysfs(settings)
    topology = read_topology(sysfs)
    targets = (
        named_functions(topology, selector, named)
        if named
        else selected_functions(topology, selector)
    )
    resolver = DriverResolver.load(topology, HostFiles(settings.host_root))
    if to_vfio:
        plan = plan_to_vfio(
            topology,
            targets,
            selector=selector,
            named=named,
            with_group_peers=with_group_peers,
            vfio_driver_for=resolver.vfio_driver,
        )
    else:
        plan = plan_to_host(topology, targets, native_driver_for=resolver.native_driver)
    if dry_run or not plan.entries:
        return TransitionResult(selector, plan, None)
    report = Engine(Kernel(sysfs), node_timeout=settings.timeout).apply(plan)
    return TransitionResult(selector, plan, report)

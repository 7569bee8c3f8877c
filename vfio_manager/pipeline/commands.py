"""What each command does, between the CLI (argv, exit codes) and the engine (sysfs writes).

Each function reads the topology once, computes, and returns a result object that knows how
to render itself; the CLI only prints those lines and exits with the result's code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from vfio_manager.cli import render
from vfio_manager.errors import ExitCode
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import is_vfio_driver
from vfio_manager.kernel.inventory import read_topology
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.pipeline.selection import Selector
from vfio_manager.pipeline.targets import named_functions, selected_functions

if TYPE_CHECKING:
    from vfio_manager.cli.main import Settings
    from vfio_manager.host.files import HostFiles
    from vfio_manager.host.modalias import AliasTable
    from vfio_manager.host.modules import Runner
    from vfio_manager.host.preflight import Preflight
    from vfio_manager.host.summary import HostSummary
    from vfio_manager.kernel.model import PciFunction, Topology
    from vfio_manager.pipeline.engine import Report
    from vfio_manager.pipeline.plan import Plan
    from vfio_manager.safety.journal import Journal


def _sysfs(settings: Settings) -> Sysfs:
    return Sysfs(settings.sysfs_root, settings.dev_root)


@dataclass(frozen=True)
class StatusResult:
    selector: Selector
    records: list[dict[str, Any]]
    host: Optional[HostSummary] = None

    @property
    def all_on_vfio(self) -> bool:
        return all(is_vfio_driver(r["driver"]) for r in self.records)

    def table_lines(self) -> list[str]:
        head = [self.host.line()] if self.host is not None else []
        if not self.records:
            return [
                *head,
                f"No PCI function matches {self.selector.describe()}: "
                "no Rebellions NPU is present on this host (nothing to do).",
            ]
        return head + render.status_lines(self.records)

    def json_lines(self) -> list[str]:
        doc: dict[str, Any] = {"devices": self.records}
        if self.host is not None:
            doc["host"] = self.host.to_json()
        return [render.to_json(doc)]


def status(settings: Settings, selector: Selector) -> StatusResult:
    """Read-only view of the selected functions."""
    sysfs = _sysfs(settings)
    topology = read_topology(sysfs)
    records = [
        render.device_record(topology, f, sysfs) for f in selected_functions(topology, selector)
    ]
    from vfio_manager.host.summary import HostSummary

    return StatusResult(selector, records, HostSummary.read(sysfs))


@dataclass(frozen=True)
class TransitionResult:
    selector: Selector
    plan: Plan
    report: Optional[Report]
    notes: tuple[str, ...] = ()  # modules loaded, journal records settled

    @property
    def exit_code(self) -> ExitCode:
        if self.report is not None:
            return self.report.exit_code
        refused = any(entry.refusal for entry in self.plan.entries)
        return ExitCode.FAILED if refused else ExitCode.OK

    def text_lines(self) -> list[str]:
        head = list(self.notes)
        if not self.plan.entries:
            return [*head, f"No PCI function matches {self.selector.describe()}: nothing to do."]
        if self.report is None:
            return head + render.plan_lines(self.plan)
        return head + render.report_lines(self.report)

    def json_lines(self) -> list[str]:
        notes = {"notes": list(self.notes)}
        if self.report is None:
            return [render.to_json({"dry_run": True, **self.plan.to_json(), **notes})]
        return [render.to_json({**self.report.to_json(), **notes})]


def transition(
    settings: Settings,
    selector: Selector,
    named: Sequence[PciAddress],
    *,
    to_vfio: bool,
    dry_run: bool = False,
    with_group_peers: bool = False,
    load_modules: bool = True,
    force: bool = False,
    runner: Optional[Runner] = None,
) -> TransitionResult:
    """Plan and (unless ``dry_run``) apply a move of the targets to vfio or back to the host.

    A real run holds the node lock from the first read to the last write, so the topology it
    plans from cannot change under it through another vfio-manager, and settles what a killed
    run left in the journal first. A dry run takes no lock and writes nothing.
    """
    request = _Request(
        settings,
        selector,
        tuple(named),
        to_vfio,
        dry_run,
        with_group_peers,
        load_modules,
        force,
        runner,
    )
    if dry_run:
        return _transition(request, journal=None)
    from vfio_manager.safety.journal import Journal
    from vfio_manager.safety.lock import NodeLock

    with NodeLock(settings.state_dir, timeout=settings.lock_timeout, proc_root=settings.proc_root):
        return _transition(request, journal=Journal(settings.state_dir))


@dataclass(frozen=True)
class _Request:
    settings: Settings
    selector: Selector
    named: tuple[PciAddress, ...]
    to_vfio: bool
    dry_run: bool
    with_group_peers: bool
    load_modules: bool
    force: bool
    runner: Optional[Runner]


def _targets(request: _Request, topology: Topology) -> list[PciFunction]:
    if request.named:
        return named_functions(topology, request.selector, request.named)
    return selected_functions(topology, request.selector)


def _transition(request: _Request, *, journal: Optional[Journal]) -> TransitionResult:
    from vfio_manager.host.driver_choice import DriverResolver
    from vfio_manager.host.files import HostFiles
    from vfio_manager.kernel.drivers import Direction
    from vfio_manager.kernel.verbs import Kernel
    from vfio_manager.pipeline.engine import Engine
    from vfio_manager.pipeline.plan import plan_to_host, plan_to_vfio
    from vfio_manager.pipeline.recovery import recover
    from vfio_manager.pipeline.refusals import find_holders, protect

    settings = request.settings
    sysfs = _sysfs(settings)
    topology = read_topology(sysfs)
    targets = _targets(request, topology)
    host = HostFiles(settings.host_root)
    resolver = DriverResolver.load(topology, host)
    direction = Direction.TO_VFIO if request.to_vfio else Direction.TO_HOST
    notes: list[str] = []
    if request.to_vfio and targets:
        loaded = gate(
            sysfs,
            host,
            topology,
            targets,
            aliases=resolver.aliases,
            selection=request.selector.describe(),
            load_modules=request.load_modules,
            dry_run=request.dry_run,
            runner=request.runner,
        )
        notes += [f"host: {note}" for note in loaded]
        if loaded and not request.dry_run:  # modules were loaded: drivers and modules changed
            topology = read_topology(sysfs)
            targets = _targets(request, topology)

    def holders_of(function: PciFunction) -> str:
        from vfio_manager.safety.holders import describe_holders

        found = find_holders(sysfs, settings.proc_root, [function]).get(function.address, [])
        return describe_holders(found)

    engine = Engine(
        Kernel(sysfs),
        node_timeout=settings.timeout,
        write_timeout=settings.timeout,
        journal=journal,
        holders=holders_of,
    )
    finishing: frozenset[PciAddress] = frozenset()
    if journal is not None:
        recovered = recover(
            journal, engine, direction=direction, targets={f.address for f in targets}
        )
        notes += [f"journal: {note}" for note in recovered.notes]
        finishing = recovered.finishing
        if recovered.wrote:
            topology = read_topology(sysfs)
            targets = _targets(request, topology)
    if request.to_vfio:
        plan = plan_to_vfio(
            topology,
            targets,
            selector=request.selector,
            named=request.named,
            with_group_peers=request.with_group_peers,
            vfio_driver_for=DriverResolver(topology, resolver.aliases).vfio_driver,
        )
    else:
        recorded = _recorded_origins(journal, targets) if journal is not None else {}
        native = DriverResolver(topology, resolver.aliases, recorded_native=recorded)
        plan = plan_to_host(topology, targets, native_driver_for=native.native_driver)
    plan = protect(plan, sysfs, proc_root=settings.proc_root, force=request.force)
    if journal is not None:
        for entry in plan.entries:  # the killed run got as far as the target: nothing left
            if entry.converged and entry.address in finishing:
                journal.complete(entry.function.bdf)
    if request.dry_run or not plan.entries:
        return TransitionResult(request.selector, plan, None, tuple(notes))
    report = engine.apply(plan)
    return TransitionResult(request.selector, plan, report, tuple(notes))


def _recorded_origins(
    journal: Journal, targets: Sequence[PciFunction]
) -> dict[PciAddress, Optional[str]]:
    """The driver each function had before it was first moved to vfio, where recorded."""
    origins: dict[PciAddress, Optional[str]] = {}
    for function in targets:
        entry = journal.original(
            function.bdf, vendor_device=f"{function.vendor:04x}:{function.device:04x}"
        )
        if entry is not None:
            origins[function.address] = entry.original_driver
    return origins


def gate(
    sysfs: Sysfs,
    host: HostFiles,
    topology: Topology,
    targets: Sequence[PciFunction],
    *,
    aliases: Optional[AliasTable],
    selection: str,
    load_modules: bool,
    dry_run: bool,
    runner: Optional[Runner] = None,
) -> tuple[str, ...]:
    """The checks of ``check``, before any write; loads missing modules unless told not to.

    Returns notes for the output (the modules loaded, or in a dry run those that would be);
    raises :class:`~vfio_manager.host.preflight.PreflightFailed` (exit 3)
    when the host is not ready.
    A dry run loads nothing and counts loadable modules as loaded when loading is on.
    """
    from vfio_manager.host import preflight

    result = preflight.run(
        sysfs,
        host,
        targets,
        aliases=aliases,
        driver_modules=topology.driver_modules,
        selection=selection,
        load=load_modules and not dry_run,
        runner=runner,
    )
    blocking = result.blocking(assume_loaded=dry_run and load_modules)
    if blocking:
        raise preflight.PreflightFailed(result, blocking)
    if result.attempts:
        return tuple(a.describe() for a in result.attempts)
    if dry_run and load_modules and result.pending:
        return (f"would load {', '.join(result.pending)} with modprobe first (dry run)",)
    return ()


@dataclass(frozen=True)
class CheckResult:
    selector: Selector
    preflight: Preflight
    functions: int
    host_root: str
    release: str

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.preflight.ok else ExitCode.HOST_NOT_READY

    def text_lines(self, mark: Optional[Callable[[bool], str]] = None) -> list[str]:
        head = (
            f"Host readiness for {self.functions} function(s) matching "
            f"{self.selector.describe()} (host root {self.host_root}, kernel {self.release}):"
        )
        failed = len(self.preflight.failed)
        if failed:
            tail = (
                f"NOT READY: {failed} of {len(self.preflight.checks)} checks failed; "
                "bind and bind-all refuse until they pass"
            )
        else:
            tail = "READY: the selected functions can be given to VMs"
        return [head, *self.preflight.lines(mark), tail]

    def json_lines(self) -> list[str]:
        return [render.to_json(self.preflight.to_json())]


def check(
    settings: Settings,
    selector: Selector,
    *,
    load_modules: bool = False,
    runner: Optional[Runner] = None,
) -> CheckResult:
    """The host readiness checklist for the selected functions; loads modules only if asked."""
    from vfio_manager.host import preflight
    from vfio_manager.host.files import HostFiles
    from vfio_manager.host.modalias import AliasTable

    sysfs = _sysfs(settings)
    topology = read_topology(sysfs)
    functions = selected_functions(topology, selector)
    host = HostFiles(settings.host_root)
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

"""The one write pipeline: read once -> gate -> plan -> refuse -> apply -> report.

A real run holds the node lock from the first read to the last write; a dry run takes no lock
and writes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Optional

from vfio_manager.errors import ExitCode, VfioManagerError
from vfio_manager.host.driver_choice import DriverResolver
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import Direction, is_vfio_driver
from vfio_manager.kernel.inventory import not_responding, read_topology
from vfio_manager.kernel.model import PciFunction, Topology
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.kernel.verbs import Kernel
from vfio_manager.log import get_logger
from vfio_manager.pipeline.engine import Engine, Interruption, Outcome, Report, Result
from vfio_manager.pipeline.node import Node
from vfio_manager.pipeline.plan import (
    Action,
    FunctionPlan,
    Plan,
    RefusalKind,
    refuse_group_mates,
    refuse_not_responding,
)
from vfio_manager.pipeline.selection import Selector, select_targets
from vfio_manager.safety.holders import describe_holders, find_holders
from vfio_manager.safety.intents import IntentStore
from vfio_manager.safety.lock import daemon_running

if TYPE_CHECKING:
    from vfio_manager.host.modules import Runner
    from vfio_manager.safety.journal import Journal, JournalEntry
    from vfio_manager.safety.lock import NodeLock

log = get_logger("vfio_manager.pipeline.transition")

Origins = dict[PciAddress, tuple[Optional[str], Optional[str]]]


@dataclass(frozen=True)
class TransitionRequest:
    """Which functions, which way, how carefully. ``exclude``: never planned, not even to
    settle a journal record; ``scope``: only those in the IOMMU groups of these (a uevent's);
    ``admin``: a one-shot command, which keeps the daemon's intents."""

    selector: Selector
    direction: Direction
    named: tuple[PciAddress, ...] = ()
    dry_run: bool = False
    with_group_peers: bool = False
    load_modules: bool = True
    force: bool = False
    runner: Optional[Runner] = None  # modprobe runner; tests inject the fake kernel's
    exclude: frozenset[PciAddress] = frozenset()
    scope: Optional[frozenset[PciAddress]] = None
    admin: bool = False

    def __post_init__(self) -> None:  # the selection's exclusions are the request's too
        object.__setattr__(self, "exclude", self.exclude | self.selector.exclude)


@dataclass(frozen=True)
class TransitionResult:
    """The plan, the report of applying it (``None``: a dry run, or nothing to do), notes."""

    request: TransitionRequest
    plan: Plan
    report: Optional[Report]
    notes: tuple[str, ...] = ()
    journal_errors: tuple[str, ...] = ()  # records the state dir would not update (no entry)
    topology: Optional[Topology] = None
    interrupted: Optional[int] = None  # the signal that stopped the run

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted is not None:
            return ExitCode(128 + self.interrupted)
        if self.report is not None and not self.journal_errors:
            return self.report.exit_code
        failed = self.journal_errors or any(entry.refusal for entry in self.plan.entries)
        return ExitCode.FAILED if failed else ExitCode.OK


class InterruptedRunError(VfioManagerError):
    """A signal stopped the run before its first write (while it waited for the node lock,
    or loaded modules): nothing was written."""

    def __init__(
        self,
        interruption: Interruption,
        during: str = "waiting for the node lock",
        step: str = "lock",
    ) -> None:
        super().__init__(
            f"{interruption.describe()} while {during}; nothing was written",
            remedy="run the command again",
            step=step,
        )
        self.exit_code = ExitCode(128 + (interruption.signum or 0))


def run_transition(
    node: Node,
    request: TransitionRequest,
    *,
    lock: Optional[NodeLock] = None,
    interruption: Optional[Interruption] = None,
) -> TransitionResult:
    """Plan and (unless ``dry_run``) apply, under ``lock`` if the caller holds it already.
    ``interruption`` stops the run between functions (and a wait for the lock)."""
    interruption = interruption or Interruption()
    if request.dry_run:
        return _Run(node, request, node.sysfs(), _readonly_journal(node), interruption).result()
    if lock is None:

        def sleep(seconds: float) -> None:  # between polls for the lock
            if interruption.signum is None:
                time.sleep(seconds)
            if interruption.signum is not None:
                raise InterruptedRunError(interruption)

        with node.lock(sleep=sleep) as held:
            return run_transition(node, request, lock=held, interruption=interruption)
    writer = lock.writer(threads=node.writer == "thread")  # its children keep the lock
    run = _Run(node, request, node.sysfs(writer), node.journal(), interruption)
    try:
        result = run.result()
    except VfioManagerError:
        run.update_intents(None)
        raise
    run.update_intents(result)
    return result


def _joined(
    pfs: Plan, plan: Plan, pf_report: Optional[Report], report: Optional[Report]
) -> tuple[Plan, Optional[Report]]:
    """One plan and report: PFs' SR-IOV entries before their VFs' to vfio, after them back."""
    if not pfs.entries:
        return plan, report
    first, then = (pfs, plan) if plan.direction is Direction.TO_VFIO else (plan, pfs)
    joined = Plan(plan.direction, first.entries + then.entries)
    if pf_report is None and report is None:
        return joined, None
    by_bdf = {o.bdf: o for r in (pf_report, report) if r is not None for o in r.outcomes}
    missing = [e for e in joined.entries if e.function.bdf not in by_bdf]
    for entry in missing:  # converged PFs when only the VFs ran, and the reverse
        by_bdf[entry.function.bdf] = Outcome(
            entry.function.bdf,
            Result.REFUSED if entry.refusal else Result.CONVERGED,
            entry.function.driver,
            entry.refusal,
            entry.remedy,
        )
    return joined, Report(plan.direction, tuple(by_bdf[e.function.bdf] for e in joined.entries))


def _readonly_journal(node: Node) -> Optional[Journal]:
    journal = node.journal(readonly=True)
    try:
        journal.pending()
    except VfioManagerError as err:  # e.g. not root: the dry run still shows the plan
        log.info("journal unreadable in a dry run", step="journal", reason=err.message)
        return None
    return journal


class _Run:
    """One pass of the pipeline; each stage is a method, in the order they run."""

    def __init__(
        self,
        node: Node,
        request: TransitionRequest,
        sysfs: Sysfs,
        journal: Optional[Journal],
        interruption: Interruption,
    ) -> None:
        self.node, self.request, self.sysfs, self.journal = node, request, sysfs, journal
        self.interruption = interruption
        self.host = node.host_files()
        self.notes: list[str] = []
        self.journal_errors: list[str] = []
        self.newer_origins: list[JournalEntry] = []  # a later release's: their functions refused
        self.intents: Optional[IntentStore] = None
        self.recorded: list[str] = []  # the intents this run recorded
        self.carrying: set[str] = set()  # the PFs given their VFs by this run
        if request.admin and not request.dry_run:
            self.intents = IntentStore(node.state_dir)

    def result(self) -> TransitionResult:
        request = self.request
        topology = read_topology(self.sysfs)
        targets = self._targets(topology)
        resolver = DriverResolver.load(topology, self.host, self.sysfs)
        gated = request.direction is Direction.TO_VFIO and targets
        if gated and self._gate(topology, targets, resolver) and not request.dry_run:
            topology = read_topology(self.sysfs)  # modules loaded: drivers changed
            targets = self._targets(topology)
            resolver = DriverResolver.load(topology, self.host, self.sysfs, resolver.aliases)
        self._record_intents(targets)
        pfs, pf_report = Plan(request.direction), None  # PFs' SR-IOV entries (VF provisioning)
        if request.direction is Direction.TO_VFIO:
            pfs = self._provision(topology, targets)
            if pfs.write_count and not request.dry_run:
                pf_report = self._apply(pfs)
                topology = read_topology(self.sysfs)  # the VFs are there now
                targets = self._targets(topology)
        else:
            pfs = self._release_plan(topology, targets)
        targets = self._with_vfs(topology, targets, pfs)
        plan = self._refuse(self._unresponsive(self._plan(topology, targets, resolver)))
        report = None if request.dry_run or not plan.entries else self._apply(plan)
        if request.direction is Direction.TO_HOST and pfs.entries and not request.dry_run:
            if report is not None:  # the VFs are back: their PFs are planned from now
                topology = read_topology(self.sysfs)
            pfs = self._release_plan(topology, [e.function for e in pfs.entries], after=True)
            pf_report = self._apply(pfs) if pfs.write_count else None
        self._drop_sriov_origins(pfs, pf_report)
        plan, report = _joined(pfs, plan, pf_report, report)
        signum = self.interruption.signum
        if signum is not None and report is not None:
            left = sum(1 for o in report.outcomes if o.step == "interrupted")
            self.notes.append(
                f"{self.interruption.describe()}: the functions in flight were finished, "
                f"{left} not started; run the command again for them"
            )
        notes, errors = tuple(self.notes), tuple(self.journal_errors)
        return TransitionResult(request, plan, report, notes, errors, topology, signum)

    def _provision(self, topology: Topology, targets: Sequence[PciFunction]) -> Plan:
        """The selected PFs asked to carry VFs (any scope: a PF reset shows as its VFs
        going): their SR-IOV entries, their SR-IOV origins recorded first."""
        from vfio_manager.pipeline.sriov import provision

        r = self.request
        if not r.selector.vfs:
            return Plan(Direction.TO_VFIO)
        found = select_targets(topology, r.selector, named=r.named, exclude=r.exclude)
        pfs = [(pf, count) for pf in found if (count := r.selector.vf_count(pf))]
        planned = Plan(
            Direction.TO_VFIO, tuple(provision(pf, n, self._sriov_origin(pf)) for pf, n in pfs)
        )
        entries = [
            self._record_sriov(e) if e.refusal is None else e
            for e in self._unresponsive(planned).entries
        ]
        self.carrying = {e.function.bdf for e in entries if e.refusal is None}
        self.notes += [
            f"sriov: {e.function.bdf}: the dry run cannot plan its VFs: they do not exist yet"
            for e in entries
            if r.dry_run and e.steps
        ]
        return self._refuse_vf_holders(Plan(Direction.TO_VFIO, tuple(entries)), topology)

    def _release_plan(
        self, topology: Topology, targets: Sequence[PciFunction], *, after: bool = False
    ) -> Plan:
        """The targeted PFs with an SR-IOV origin: back to it once their VFs are back
        (``after`` the VFs' run: one still on vfio refuses its PF)."""
        from vfio_manager.pipeline.plan import in_vfio_mode
        from vfio_manager.pipeline.sriov import release

        entries = []
        for target in targets:
            pf = topology.get(target.address)
            origin = self._sriov_origin(pf) if pf is not None and pf.can_sriov else None
            if pf is None or origin is None:
                continue
            entry = release(pf, origin)
            left = [vf.bdf for vf in topology.vfs_of(pf) if in_vfio_mode(vf)]
            if after and left:
                entry = replace(
                    entry,
                    steps=(),
                    refusal=f"its VFs {', '.join(left)} are still on vfio",
                    remedy="resolve their refusal or failure first, then run the command again",
                    refusal_kind=RefusalKind.GROUP,
                )
            entries.append(entry)
        plan = self._unresponsive(Plan(Direction.TO_HOST, tuple(entries)))
        return self._refuse_vf_holders(plan, topology)

    def _unresponsive(self, plan: Plan) -> Plan:
        """Refuse the functions whose config reads all-ones (K27) before anything is recorded
        or written."""
        dead = [e.address for e in plan.entries if not_responding(self.sysfs, e.function)]
        return refuse_not_responding(plan, dead)

    def _sriov_origin(self, pf: PciFunction) -> Optional[JournalEntry]:
        if self.journal is None:
            return None
        try:
            return self.journal.sriov(pf.bdf, vendor_device=f"{pf.vendor:04x}:{pf.device:04x}")
        except VfioManagerError as err:
            self._journal_failed(pf.bdf, "its SR-IOV origin could not be read", err)
            return None

    def _record_sriov(self, entry: FunctionPlan) -> FunctionPlan:
        """No SR-IOV origin on file, no write to the PF."""
        if self.journal is None or self.request.dry_run:
            return entry
        try:
            self.journal.record_sriov(entry.function)
        except VfioManagerError as err:
            reason = f"its SR-IOV origin could not be recorded: {err.message}"
            kind = RefusalKind.JOURNAL
            return replace(entry, steps=(), refusal=reason, remedy=err.remedy, refusal_kind=kind)
        return entry

    def _refuse_vf_holders(self, plan: Plan, topology: Topology) -> Plan:
        """A PF's numvfs write removes its VFs: refused while a process holds one of them
        (``--force``: warn only; the write then waits for them, as an unbind does)."""
        removing = {  # the PFs whose numvfs write removes VFs, and those VFs
            e.address: topology.vfs_of(e.function)
            for e in plan.entries
            if any(s.action is Action.SRIOV_NUMVFS for s in e.steps)
        }
        vfs = [vf for found in removing.values() for vf in found]
        held = find_holders(self.sysfs, self.node.proc_root, vfs) if vfs else {}  # one scan
        entries = []
        for entry in plan.entries:
            named = "; ".join(
                f"{vf.address}: {describe_holders(held[vf.address])}"
                for vf in removing.get(entry.address, [])
                if held.get(vf.address)
            )
            if named and self.request.force:
                log.warning("forced", bdf=entry.function.bdf, step="protect", reason=named)
            elif named:
                entry = replace(  # noqa: PLW2901 - the refused replacement of this entry
                    entry,
                    steps=(),
                    refusal=f"changing its sriov_numvfs would remove VFs in use: {named}",
                    remedy="stop those processes (a VM: shut it down or detach the device), "
                    "or pass --force (the write then waits for them, up to --timeout)",
                    refusal_kind=RefusalKind.IN_USE,
                )
            entries.append(entry)
        return Plan(plan.direction, tuple(entries))

    def _with_vfs(
        self, topology: Topology, targets: list[PciFunction], pfs: Plan
    ) -> list[PciFunction]:
        """The targets with the VFs of the PFs that carry them for us, less those PFs (they
        stay on their native driver). To vfio, a PF the kernel's rules refuse brings none."""
        if not pfs.entries:
            return targets
        listed = {e.address for e in pfs.entries}
        barred = {
            e.address
            for e in pfs.entries
            if e.refusal_kind is RefusalKind.KERNEL and e.direction is Direction.TO_VFIO
        }
        # a uevent's scope: the VFs of a PF with nothing to do come only as its groups say
        scoped = self.request.scope is not None
        bringing = {e.address for e in pfs.entries if e.steps or not scoped} - barred
        vfs = [
            vf
            for address in bringing
            if (pf := topology.get(address)) is not None
            for vf in topology.vfs_of(pf)
            if vf.address not in self.request.exclude
        ]
        chosen = {
            f.address: f
            for f in [*targets, *vfs]
            if f.address not in listed
            and (f.physfn not in barred or self.request.selector.matches(f))
        }
        return sorted(chosen.values(), key=lambda f: f.address)

    def _drop_sriov_origins(self, pfs: Plan, report: Optional[Report]) -> None:
        """A PF back at its SR-IOV origin needs its record no more."""
        if self.journal is None or self.request.dry_run or pfs.direction is Direction.TO_VFIO:
            return
        done = {o.bdf for o in report.outcomes if o.result is Result.CHANGED} if report else set()
        for entry in pfs.entries:
            if entry.converged or entry.function.bdf in done:
                self._journal_change(
                    self.journal.drop_sriov, entry.function.bdf, "its SR-IOV origin"
                )

    def _targets(self, topology: Topology) -> list[PciFunction]:
        r = self.request
        return select_targets(topology, r.selector, named=r.named, scope=r.scope, exclude=r.exclude)

    def _gate(
        self, topology: Topology, targets: list[PciFunction], resolver: DriverResolver
    ) -> bool:
        """The checks of ``check`` before any write, loading missing modules (if it did)."""
        from vfio_manager.host import preflight

        request = self.request
        dry_run, load = request.dry_run, request.load_modules
        result = preflight.run(
            self.sysfs,
            self.host,
            targets,
            aliases=resolver.aliases,
            driver_modules=topology.driver_modules,
            selection=request.selector.describe(),
            load=load and not dry_run,
            runner=request.runner,
        )
        if result.attempts and self.interruption.signum is not None:
            # Ctrl-C reaches the whole process group: a modprobe it killed is no host problem
            raise InterruptedRunError(self.interruption, "loading modules", step="preflight")
        blocking = result.blocking(assume_loaded=dry_run and load)
        if blocking:
            raise preflight.PreflightFailed(result, blocking, topology)
        loaded = tuple(a.describe() for a in result.attempts)
        self.notes += [f"host: {note}" for note in loaded]
        if not loaded and dry_run and load and result.pending:
            pending = ", ".join(result.pending)
            self.notes.append(f"host: would load {pending} with modprobe first (dry run)")
        return bool(loaded)

    def _record_intents(self, targets: Sequence[PciFunction]) -> None:
        """Returning functions while a daemon is up: one intent each, so it leaves them be."""
        intents, to_host = self.intents, self.request.direction is Direction.TO_HOST
        if intents is not None and to_host and daemon_running(self.node.state_dir):
            self.recorded = [intents.add(function.bdf).bdf for function in targets]

    def update_intents(self, result: Optional[TransitionResult]) -> None:
        """Clear the intents that no longer hold: a bind's functions on vfio, and those this
        run recorded but did not return."""
        if self.intents is None:
            return
        report = result.report if result is not None else None
        outcomes = report.outcomes if report is not None else ()
        if self.request.direction is Direction.TO_VFIO:
            done = (Result.CHANGED, Result.CONVERGED)
            carrying = self.carrying  # a PF that carries its VFs stays on its driver
            clear = [
                o.bdf
                for o in outcomes
                if o.result in done and (is_vfio_driver(o.driver) or o.bdf in carrying)
            ]
        elif report is None:
            clear = self.recorded
        else:
            clear = [o.bdf for o in outcomes if o.bdf in self.recorded and is_vfio_driver(o.driver)]
        try:
            if clear:
                self.intents.clear(clear)
        except VfioManagerError as err:
            log.error("intents not updated", error=err.message, remedy=err.remedy)

    def _plan(
        self, topology: Topology, targets: list[PciFunction], resolver: DriverResolver
    ) -> Plan:
        """The plan for ``targets``, with what the journal asks settled in it."""
        from vfio_manager.pipeline.plan import plan_to_host, plan_to_vfio, settle

        request = self.request
        pending = self.journal.pending() if self.journal is not None else []
        # an excluded function's record is kept for a later run (one gone is settled as moot)
        kept = {str(a) for a in request.exclude if a in topology.functions}
        self.notes += [
            f"journal: {e.bdf}: record kept, the function is excluded"
            for e in pending
            if e.bdf in kept
        ]
        pending = [e for e in pending if e.bdf not in kept]
        settlement = settle(
            pending,
            topology,
            selector=request.selector,
            direction=request.direction,
            targets={f.address for f in targets},
            probe_picks=resolver.probe_picks,
        )
        self.notes += [f"journal: {note}" for note in settlement.notes]
        if self.journal is not None:
            for bdf in settlement.moot:  # the function is gone
                self._journal_change(self.journal.drop_transition, bdf, "its moot record")
        targets = targets + settlement.extra_targets
        if request.direction is Direction.TO_VFIO:
            plan = plan_to_vfio(
                topology,
                targets,
                selector=request.selector,
                named=request.named,
                with_group_peers=request.with_group_peers,
                vfio_driver_for=resolver.vfio_driver,
                exclude=request.exclude,
            )
        else:
            settling = frozenset(settlement.interrupted)
            origins = self._origins(targets, settling, pending)
            host = replace(resolver, origins=origins)
            plan = plan_to_host(
                topology, targets, host_target_for=host.host_target, settling=settling
            )
            settlement.entries.extend(self._newer_origins(targets))
        refused = {e.address for e in settlement.entries}
        entries = [
            replace(e, interrupted=settlement.interrupted.get(e.address))
            for e in plan.entries
            if e.address not in refused
        ]
        return Plan(plan.direction, (*entries, *settlement.entries))

    def _newer_origins(self, targets: Sequence[PciFunction]) -> list[FunctionPlan]:
        """Refuse to move home a function whose origin a later release recorded (kept)."""
        from vfio_manager.safety.journal import NEWER_REMEDY

        newer = {e.bdf: e for e in self.newer_origins}
        return [
            FunctionPlan(
                f,
                Direction.TO_HOST,
                refusal=f"its origin record was {newer[f.bdf].problem}",
                remedy=NEWER_REMEDY,
                refusal_kind=RefusalKind.JOURNAL,
            )
            for f in targets
            if f.bdf in newer
        ]

    def _journal_change(self, change: Callable[[str], object], bdf: str, what: str) -> None:
        if self.request.dry_run:
            return
        try:
            change(bdf)
        except VfioManagerError as err:
            self._journal_failed(bdf, f"{what} could not be dropped", err)

    def _journal_failed(self, bdf: str, what: str, err: VfioManagerError) -> None:
        remedy = f" (remedy: {err.remedy})" if err.remedy else ""
        text = f"{bdf}: {what}: {err.message}{remedy}"
        log.error("journal", bdf=bdf, step="journal", outcome="failed", reason=err.message)
        self.journal_errors.append(text)
        self.notes.append(f"journal: {text}")

    def _origins(
        self,
        targets: Sequence[PciFunction],
        settling: Collection[PciAddress],
        pending: Sequence[JournalEntry],
    ) -> Origins:
        """The (driver, override) each function was found in before it first moved to vfio,
        where the journal has it; one changed on the host since is over (dropped)."""
        from vfio_manager.pipeline.plan import in_vfio_mode

        origins: Origins = {}
        if self.journal is None:
            return origins
        unreadable: set[Optional[str]] = set()  # said already: their origin record
        self.journal.take_set_aside()  # the transition records': settle said them already
        for function in targets:
            bdf, ids = function.bdf, f"{function.vendor:04x}:{function.device:04x}"
            try:
                entry = self.journal.original(bdf, vendor_device=ids)
            except VfioManagerError as err:
                self._journal_failed(bdf, "its origin record could not be read", err)
                continue
            if entry is None:
                continue
            if entry.original_driver_unknown:
                self.notes.append(
                    f"journal: {bdf}: its origin record has no usable driver name "
                    "(recorded as unknown); its native driver comes from modules.alias"
                )
                unreadable.add(bdf)
                continue
            found = (entry.original_driver, entry.original_override)
            now = (function.driver, function.driver_override)
            if function.address not in settling and not in_vfio_mode(function) and now != found:
                log.info(
                    "journal: origin is over, the function was changed on the host",
                    bdf=bdf,
                    step="journal",
                    recorded=list(found),
                    now=list(now),
                )
                self._journal_change(self.journal.forget_origin, bdf, "its origin record")
                continue
            origins[function.address] = found
        for bad in self.journal.take_set_aside():
            unreadable.add(bad.bdf or "")
            if bad.newer_schema is not None:
                self.newer_origins.append(bad)
                continue
            where = f"set aside as {bad.quarantined_as}" if bad.quarantined_as else "ignored"
            self.notes.append(
                f"journal: {bad.bdf}: its origin record was unreadable ({bad.problem}); "
                f"{where}; its native driver comes from modules.alias instead"
            )
        returning = {f.bdf for f in targets}
        for record in pending:  # a transition record unreadable: the origin decides
            if record.corrupt and record.bdf in returning and record.bdf not in unreadable:
                origin = origins.get(PciAddress.parse(record.bdf or ""))
                driver = (origin[0] or "no driver: it stays unbound") if origin else None
                self.notes.append(
                    f"journal: {record.bdf}: its native driver comes from its origin record "
                    f"({driver})"
                    if origin is not None
                    else f"journal: {record.bdf}: it has no readable origin record; its native "
                    "driver comes from modules.alias"
                )
        return origins

    def _refuse(self, plan: Plan) -> Plan:
        """Refuse what a process holds or the host needs, and its group mates both ways: a
        group is handed over whole (``--force``: warn only)."""
        refused: dict[PciAddress, dict[str, Any]] = {}  # how each entry is refused
        moving = [e for e in plan.entries if e.refusal is None and e.steps]
        to_vfio = [e for e in moving if e.direction is Direction.TO_VFIO]
        force = "pass --force to move it anyway"
        if to_vfio:
            from vfio_manager.safety.hostcritical import HostCritical

            guard = HostCritical(self.sysfs, proc_root=self.node.proc_root)
            for entry in to_vfio:
                driver = entry.function.driver
                on_host = not is_vfio_driver(driver)  # no driver: efifb may draw on it
                found = guard.reasons(entry.address) if on_host else []
                if found:
                    refused[entry.address] = {
                        "refusal": "the host needs it: " + "; ".join(found),
                        "remedy": "move the host's disk, network or console elsewhere first, "
                        f"or {force}",
                        "refusal_kind": RefusalKind.HOST_CRITICAL,
                    }
        unbinds = [e for e in moving if any(s.action is Action.UNBIND for s in e.steps)]
        unbinding = [e.function for e in unbinds if e.address not in refused]
        for address, holders in find_holders(self.sysfs, self.node.proc_root, unbinding).items():
            refused[address] = {
                "refusal": "it is in use: " + describe_holders(holders),
                "remedy": "stop those processes (a VM: shut it down or detach the device), or "
                f"{force} (the unbind then waits for them, up to --timeout)",
                "refusal_kind": RefusalKind.IN_USE,
            }
        for address, why in refused.items() if self.request.force else ():
            reason = why["refusal"]
            log.warning("forced", bdf=str(address), step="protect", outcome="forced", reason=reason)
        if self.request.force or not refused:
            return plan
        entries = [
            replace(e, steps=(), **refused[e.address]) if e.address in refused else e
            for e in plan.entries
        ]
        return Plan(plan.direction, tuple(refuse_group_mates(entries, set(refused))))

    def _apply(self, plan: Plan) -> Report:
        """Run the engine; a write that hangs is held by someone: one /proc scan names them."""
        engine = Engine(
            Kernel(self.sysfs),
            node_timeout=self.node.timeout,
            write_timeout=self.node.timeout,
            journal=self.journal,
            parallel=self.node.parallel,
            interruption=self.interruption,
        )
        report = engine.apply(plan)
        stuck = {o.bdf for o in report.outcomes if o.stuck}
        if not stuck:
            return report
        functions = [e.function for e in plan.entries if e.function.bdf in stuck]
        found = find_holders(self.sysfs, self.node.proc_root, functions)
        named = {str(address): describe_holders(h) for address, h in found.items() if h}
        outcomes = tuple(
            replace(o, reason=f"{o.reason}; held by {named[o.bdf]}") if o.bdf in named else o
            for o in report.outcomes
        )
        return replace(report, outcomes=outcomes)

"""Applies a plan: runs each function's steps, verifies, waits, and undoes a failed function.

One function failing never stops the others; it is put back where it started (override and
driver) and the report says so. /dev/vfio nodes of all functions are awaited side by side
under one deadline after the writes, never one function after another.
"""

from __future__ import annotations

import enum
import errno as errno_mod
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Optional, TypeVar, Union

from vfio_manager.errors import ExitCode, SysfsWriteError, TransitionError, VfioManagerError
from vfio_manager.host.dynamic_ids import remove_id_remedy
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import STAY_UNBOUND, Direction, is_vfio_driver
from vfio_manager.kernel.verbs import Kernel
from vfio_manager.log import get_logger
from vfio_manager.pipeline.node import DEFAULT_WRITE_TIMEOUT
from vfio_manager.pipeline.plan import Action, FunctionPlan, Plan, Step
from vfio_manager.safety.writer import Deadline, DeadlineExceededError, bounded

if TYPE_CHECKING:
    from vfio_manager.safety.journal import Journal

log = get_logger("vfio_manager.pipeline.engine")

DEFAULT_NODE_TIMEOUT = 10.0
DEFAULT_PARALLEL = 8
"""IOMMU groups moved side by side: enough for a node of NPUs (8 per host is common), few
enough that a driver's probe is not raced by dozens of its own."""
_POLL_INTERVAL = 0.05
T = TypeVar("T")

_BIND_ERRNO_HINTS = {
    errno_mod.EINVAL: "the driver refused the function at probe (no IOMMU group, a bridge, or a "
    "denylisted ID; dmesg shows 'probe ... failed with error -22')",
    errno_mod.EBUSY: "the function is busy (an SR-IOV PF with VFs enabled, or bound meanwhile)",
    errno_mod.ENODEV: "the driver does not match it (driver_override names another driver) or "
    "the function is gone",
}


class Status(str, enum.Enum):
    CHANGED = "changed"
    CONVERGED = "converged"
    REFUSED = "refused"
    FAILED = "failed"


@dataclass(frozen=True)
class Outcome:
    """What happened to one function; ``restored_to`` is set when a failure was undone."""

    bdf: str
    status: Status
    driver: Optional[str] = None
    reason: Optional[str] = None
    remedy: Optional[str] = None
    step: Optional[str] = None
    errno: Optional[int] = None
    restored_to: Optional[str] = None
    writes: int = 0
    journal: Optional[str] = None  # the interrupted run this entry settled (or tried to)
    stuck: bool = False  # a write missed its deadline and is still pending in the kernel
    journal_error: Optional[str] = None  # the state dir refused to record the outcome

    def to_json(self) -> dict[str, Any]:
        return {
            "bdf": self.bdf,
            "outcome": self.status.value,
            "driver": self.driver,
            "reason": self.reason,
            "remedy": self.remedy,
            "step": self.step,
            "errno": errno_mod.errorcode.get(self.errno) if self.errno else None,
            "restored_to": self.restored_to,
            "writes": self.writes,
            "journal": self.journal,
            "journal_error": self.journal_error,
        }


_LaneResult = Union[Outcome, tuple[FunctionPlan, int, int]]
"""What moving one function gives: its outcome, or (entry, IOMMU group, writes) to wait for."""


@dataclass(frozen=True)
class Report:
    direction: Direction
    outcomes: tuple[Outcome, ...]

    @property
    def exit_code(self) -> ExitCode:
        ok = all(
            o.status in (Status.CHANGED, Status.CONVERGED) and o.journal_error is None
            for o in self.outcomes
        )
        return ExitCode.OK if ok else ExitCode.FAILED

    @property
    def writes(self) -> int:
        return sum(o.writes for o in self.outcomes)

    def to_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction.value,
            "ok": self.exit_code == ExitCode.OK,
            "writes": self.writes,
            "functions": [o.to_json() for o in self.outcomes],
        }


def _note(entry: FunctionPlan) -> Optional[str]:
    return entry.interrupted.note if entry.interrupted is not None else None


def _kept(entry: FunctionPlan) -> Optional[str]:
    """For an entry that did not settle its record: say so (the next run sees it again)."""
    if entry.interrupted is None:
        return None
    return f"{entry.interrupted.note}: not settled, the journal record is kept"


def _journal_problem(err: VfioManagerError) -> str:
    return f"{err.message} (remedy: {err.remedy})" if err.remedy else err.message


def _driver_label(driver: Optional[str]) -> str:
    return driver if driver is not None else "no driver"


class Engine:
    """Runs plans against the kernel. ``clock``/``sleep`` are injectable for tests.

    ``write_timeout`` bounds each function's writes (its steps share one deadline); each
    write runs off the main thread, transient errnos are retried inside that deadline.
    ``journal`` (optional) records each function before its first write, so a run killed
    half way can be finished or rolled back by the next one. ``parallel`` IOMMU groups move
    side by side (1: one function after another).
    """

    def __init__(
        self,
        kernel: Kernel,
        *,
        node_timeout: float = DEFAULT_NODE_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        journal: Optional[Journal] = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        parallel: int = DEFAULT_PARALLEL,
    ) -> None:
        self.kernel = kernel
        self.parallel = parallel
        self.node_timeout = node_timeout
        self.write_timeout = write_timeout
        self.journal = journal
        self.clock = clock
        self.sleep = sleep
        # functions drivers_probe gave to another driver than the plan's (taken off again)
        self._probe_picked: dict[PciAddress, tuple[str, Optional[str]]] = {}

    # -- public ---------------------------------------------------------------------------
    def apply(self, plan: Plan) -> Report:
        """Run the plan: refusals and converged functions are reported as they are; the
        functions to move run their steps, IOMMU groups side by side and the functions of
        one group one after another (a native probe may take seconds: a return of 8 NPUs
        should take one of them, not eight); then every /dev/vfio node is awaited together."""
        outcomes: dict[PciAddress, Outcome] = {}
        waiting: dict[PciAddress, tuple[FunctionPlan, int, int]] = {}
        lanes: dict[object, list[FunctionPlan]] = {}
        for entry in plan.entries:
            bdf = entry.function.bdf
            if entry.refusal is not None:
                log.warning(
                    "refused", bdf=bdf, step="plan", outcome="refused", reason=entry.refusal
                )
                outcomes[entry.address] = Outcome(
                    bdf,
                    Status.REFUSED,
                    entry.function.driver,
                    entry.refusal,
                    entry.remedy,
                    journal=_kept(entry),
                )
            elif entry.converged:
                # debug, not info: a converged node is the common case (every init container
                # start, every resync); the report on stdout says it per function, and a
                # quiet run then never pays for the logging stack (issue 12, cold start)
                log.debug(
                    "converged",
                    bdf=bdf,
                    step="plan",
                    outcome="converged",
                    driver=entry.function.driver,
                )
                outcomes[entry.address] = self._settled(
                    entry, Outcome(bdf, Status.CONVERGED, entry.function.driver)
                )
            else:
                group = entry.function.iommu_group
                lanes.setdefault(entry.address if group is None else group, []).append(entry)
        for address, result in self._run_lanes(list(lanes.values())):
            if isinstance(result, Outcome):
                outcomes[address] = result
            else:
                waiting[address] = result
        outcomes.update(self._wait_for_nodes(waiting))
        return Report(plan.direction, tuple(outcomes[e.address] for e in plan.entries))

    def _run_lanes(self, lanes: list[list[FunctionPlan]]) -> list[tuple[PciAddress, _LaneResult]]:
        """Each lane (an IOMMU group's functions, in plan order) on a thread of its own, at
        most :attr:`parallel` at once; one lane runs on the calling thread."""

        def run(lane: list[FunctionPlan]) -> list[tuple[PciAddress, _LaneResult]]:
            return [(entry.address, self._move(entry)) for entry in lane]

        if len(lanes) <= 1 or self.parallel <= 1:
            return [item for lane in lanes for item in run(lane)]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(
            max_workers=min(self.parallel, len(lanes)), thread_name_prefix="vfio-manager-lane"
        ) as pool:
            return [item for done in pool.map(run, lanes) for item in done]

    def _move(self, entry: FunctionPlan) -> _LaneResult:
        """One function's writes: its outcome, or what to wait for (group, writes)."""
        bdf = entry.function.bdf
        if self.journal is not None and entry.write_count and not entry.interrupted:
            try:
                self.journal.record_start(entry.function, entry.direction)
            except VfioManagerError as err:  # no record, no write
                return self._unrecorded(entry, err)
        sysfs = self.kernel.sysfs
        before = sysfs.writes_to(bdf)
        try:
            wait = self._run_steps(entry)
        except DeadlineExceededError as err:
            return self._stuck(entry, err, sysfs.writes_to(bdf) - before)
        except VfioManagerError as err:
            return self._fail(entry, err, sysfs.writes_to(bdf) - before)
        writes = sysfs.writes_to(bdf) - before
        if wait is not None and wait.group is not None:
            return (entry, wait.group, writes)
        return self._done(entry, writes)

    def _bounded(
        self, address: PciAddress, step: str, what: str, fn: Callable[[], T], deadline_at: float
    ) -> T:
        """One write under the function's deadline; a vanished function is not retried."""

        def write() -> T:
            try:
                return fn()
            except SysfsWriteError as err:
                gone = err.errno in (errno_mod.ENODEV, errno_mod.ENOENT)
                if gone and not self.kernel.exists(address):
                    raise TransitionError(
                        f"{address} disappeared during {step}", errno=err.errno
                    ) from err
                raise

        deadline = Deadline(deadline_at, what, str(address), step, self.clock)
        return bounded(write, deadline, sleep=self.sleep)

    # -- steps ----------------------------------------------------------------------------
    def _run_steps(self, entry: FunctionPlan) -> Optional[Step]:
        """Run the writing and verifying steps; return the wait step, if any, for later."""
        address = entry.address
        deadline_at = self.clock() + self.write_timeout
        wait: Optional[Step] = None
        for step in entry.steps:
            if step.action is Action.WAIT_VFIO_NODE:
                wait = step
                continue
            try:
                self._run_step(address, step, deadline_at)
            except VfioManagerError as err:
                err.step = err.step or step.action.value
                err.bdf = str(address)
                raise
            log.info(
                "step", bdf=str(address), step=step.action.value, outcome="done", driver=step.driver
            )
        return wait

    def _run_step(self, address: PciAddress, step: Step, deadline_at: float) -> None:
        kernel = self.kernel
        name = step.action.value
        driver = step.driver
        if step.action is Action.SET_OVERRIDE and driver is not None:
            self._bounded(
                address,
                name,
                f"set the override of {address} to {driver}",
                lambda: kernel.set_override(address, driver),
                deadline_at,
            )
        elif step.action is Action.CLEAR_OVERRIDE:
            self._bounded(
                address,
                name,
                f"clear the override of {address}",
                lambda: kernel.clear_override(address),
                deadline_at,
            )
        elif step.action is Action.UNBIND and driver is not None:
            self._bounded(
                address,
                name,
                f"unbind {address} from {driver}",
                lambda: kernel.unbind(address, driver),
                deadline_at,
            )
        elif step.action is Action.PROBE:
            self._bounded(
                address, name, f"probe {address}", lambda: kernel.probe(address), deadline_at
            )
        elif step.action is Action.VERIFY_DRIVER:
            self._verify(address, driver, deadline_at)

    def _take_off(
        self, address: PciAddress, picked: str, expected: Optional[str], deadline_at: float
    ) -> None:
        """drivers_probe attached ``picked``, not ``expected``: unbind it (it got the function
        a moment ago, nobody holds it) and remember why, for the report."""
        self._bounded(
            address,
            Action.UNBIND.value,
            f"unbind {address} from {picked} (drivers_probe's choice)",
            lambda: self.kernel.unbind(address, picked),
            deadline_at,
        )
        self._probe_picked[address] = (picked, expected)
        log.warning(
            "drivers_probe picked another driver",
            bdf=str(address),
            step=Action.VERIFY_DRIVER.value,
            driver=picked,
            expected=expected,
        )

    def _bind_once(self, address: PciAddress, driver: str, deadline_at: float, step: str) -> None:
        """One explicit bind, no retry: its errno is the diagnosis, not a transient state."""
        deadline = Deadline(
            deadline_at, f"bind {address} to {driver}", str(address), step, self.clock
        )
        bounded(lambda: self.kernel.bind(address, driver), deadline, retry=False)

    def _verify(self, address: PciAddress, expected: Optional[str], deadline_at: float) -> None:
        """Read the driver link back. When drivers_probe attached another driver (a dynamic
        ID, or a driver registered first), take it off; when the expected driver is absent,
        bind it explicitly, which also gives its errno when it refuses."""
        current = self.kernel.driver_of(address)
        if expected == STAY_UNBOUND:
            if current is not None:
                raise TransitionError(f"{address} is on {current}; it was expected to stay unbound")
            return
        if expected is None:
            if is_vfio_driver(current) and current is not None:
                # no host driver is known: driverless is where the kernel would leave it
                self._take_off(address, current, None, deadline_at)
            return
        if current == expected:
            return
        if current is not None:
            self._take_off(address, current, expected, deadline_at)
        if not self.kernel.exists(address):
            raise TransitionError(f"{address} disappeared", errno=errno_mod.ENODEV)
        try:
            self._bind_once(address, expected, deadline_at, Action.VERIFY_DRIVER.value)
        except SysfsWriteError as err:
            hint = _BIND_ERRNO_HINTS.get(err.errno or 0, "see dmesg")
            raise TransitionError(
                f"{expected} did not bind {address}: "
                f"{errno_mod.errorcode.get(err.errno or 0, err.errno)}: {hint}",
                errno=err.errno,
                remedy="run `vfio-manager check`; `dmesg | tail` shows the driver's own message",
            ) from err
        if self.kernel.driver_of(address) != expected:
            raise TransitionError(f"{expected} did not bind {address} (no error reported)")

    # -- outcomes ---------------------------------------------------------------------------
    def _settled(self, entry: FunctionPlan, outcome: Outcome, *, back: bool = False) -> Outcome:
        """Drop the function's journal record now that it reached its target (or, with
        ``back``, its start state); a state dir that refuses is reported, not raised."""
        if self.journal is None or (not (back or outcome.writes) and entry.interrupted is None):
            return outcome
        try:
            self.journal.drop_transition(entry.function.bdf)
        except VfioManagerError as err:
            log.error(
                "journal", bdf=entry.function.bdf, step="journal", outcome="failed", reason=err
            )
            return replace(outcome, journal=_note(entry), journal_error=_journal_problem(err))
        return replace(outcome, journal=_note(entry))

    def _unrecorded(self, entry: FunctionPlan, err: VfioManagerError) -> Outcome:
        """The record could not be written before the first write: refused, nothing written."""
        bdf = entry.function.bdf
        reason = f"its journal record could not be written: {err.message}"
        log.error("refused", bdf=bdf, step="journal", outcome="refused", reason=reason)
        return Outcome(
            bdf,
            Status.REFUSED,
            entry.function.driver,
            reason,
            err.remedy,
            "journal",
            err.errno,
            journal=_kept(entry),
        )

    def _done(self, entry: FunctionPlan, writes: int) -> Outcome:
        driver = self.kernel.driver_of(entry.address)
        status = Status.CHANGED if writes else Status.CONVERGED
        log.info(
            "transition",
            bdf=entry.function.bdf,
            step="done",
            outcome=status.value,
            driver=driver,
            writes=writes,
        )
        reason, remedy = self._probe_note(entry)
        outcome = Outcome(entry.function.bdf, status, driver, reason, remedy, writes=writes)
        return self._settled(entry, outcome)

    def _probe_note(self, entry: FunctionPlan) -> tuple[Optional[str], Optional[str]]:
        """What the report says when drivers_probe picked another driver on the way."""
        picked = self._probe_picked.pop(entry.address, None)
        if picked is None:
            return None, None
        driver, expected = picked
        function = entry.function
        ids = f"{function.vendor:04x}:{function.device:04x}"
        why = (
            f"{driver} has a dynamic ID for {ids} (new_id or {driver}.ids=)"
            if is_vfio_driver(driver)
            else f"{driver} claims {ids} (a dynamic ID, or it was registered first)"
        )
        then = f"bound {expected} explicitly" if expected else "left it unbound"
        return (
            f"drivers_probe picked {driver}: {why}; took it off and {then}",
            remove_id_remedy(driver, function.vendor, function.device),
        )

    def _wait_for_nodes(
        self, waiting: dict[PciAddress, tuple[FunctionPlan, int, int]]
    ) -> dict[PciAddress, Outcome]:
        """Wait for every /dev/vfio/N at once, under a single deadline; a function that is
        gone (hot-unplug, surprise removal) is reported as such at once, not waited for."""
        results: dict[PciAddress, Outcome] = {}
        deadline = self.clock() + self.node_timeout
        while waiting:
            for address, (entry, group, writes) in list(waiting.items()):
                if self.kernel.sysfs.vfio_node_exists(group):
                    results[address] = self._done(entry, writes)
                    del waiting[address]
                elif not self.kernel.exists(address):
                    results[address] = self._removed_while_waiting(entry, group, writes)
                    del waiting[address]
            if not waiting or self.clock() >= deadline:
                break
            self.sleep(_POLL_INTERVAL)
        for address, (entry, group, writes) in waiting.items():
            node = self.kernel.sysfs.vfio_group_node(group)
            reason = (
                f"bound to {self.kernel.driver_of(address)}, but {node} did not appear "
                f"within {self.node_timeout:g}s"
            )
            log.error(
                "transition",
                bdf=entry.function.bdf,
                step="wait-vfio-node",
                outcome="failed",
                reason=reason,
            )
            results[address] = Outcome(
                entry.function.bdf,
                Status.FAILED,
                self.kernel.driver_of(address),
                reason,
                "in a container, mount the host's /dev (the node is created by devtmpfs/udev "
                "on the host); raise --timeout on slow hosts",
                step=Action.WAIT_VFIO_NODE.value,
                writes=writes,
                journal=_kept(entry),
            )
        return results

    def _removed_while_waiting(self, entry: FunctionPlan, group: int, writes: int) -> Outcome:
        """The function left the bus after its writes, before its /dev/vfio node appeared."""
        self._probe_picked.pop(entry.address, None)
        node = self.kernel.sysfs.vfio_group_node(group)
        reason = f"{entry.function.bdf} was removed (hot-unplug) while waiting for {node}"
        log.error(
            "transition",
            bdf=entry.function.bdf,
            step=Action.WAIT_VFIO_NODE.value,
            outcome="failed",
            reason=reason,
        )
        return Outcome(
            entry.function.bdf,
            Status.FAILED,
            None,
            reason,
            "check `dmesg` for a hot-unplug or a surprise removal; after a rescan, run the "
            "command again",
            step=Action.WAIT_VFIO_NODE.value,
            errno=errno_mod.ENODEV,
            writes=writes,
            journal=_kept(entry),
        )

    def _fail(self, entry: FunctionPlan, err: VfioManagerError, writes: int) -> Outcome:
        bdf = entry.function.bdf
        self._probe_picked.pop(entry.address, None)
        log.error("transition", bdf=bdf, step=err.step, outcome="failed", reason=err.message)
        if not self.kernel.exists(entry.address):
            return Outcome(
                bdf,
                Status.FAILED,
                None,
                f"{err.message}; the function disappeared",
                "check `dmesg` for a hot-unplug or a surprise removal",
                err.step,
                err.errno,
                writes=writes,
                journal=_kept(entry),
            )
        before = self.kernel.sysfs.writes_to(bdf)
        start_driver, start_override = entry.start_state
        restored, note = self._restore(
            entry.address, start_driver=start_driver, start_override=start_override
        )
        writes += self.kernel.sysfs.writes_to(bdf) - before
        reason = err.message if note is None else f"{err.message}; {note}"
        log.warning(
            "rollback",
            bdf=bdf,
            step="restore",
            outcome="restored" if note is None else "incomplete",
            restored_to=restored,
        )
        outcome = Outcome(
            bdf,
            Status.FAILED,
            self.kernel.driver_of(entry.address),
            reason,
            err.remedy,
            err.step,
            err.errno,
            restored_to=restored,
            writes=writes,
            journal=_kept(entry),
        )
        if note is None:  # back in its start state: the record has nothing left to settle
            return self._settled(entry, outcome, back=True)
        return outcome

    def _stuck(self, entry: FunctionPlan, err: DeadlineExceededError, writes: int) -> Outcome:
        """A write hangs in the kernel: report it (the pipeline names who holds the function);
        touch it no more.

        Undoing would queue another write behind the stuck one. The journal keeps the
        transition, so the run after the device is released finishes or undoes it.
        """
        bdf = entry.function.bdf
        reason = err.message
        log.error("transition", bdf=bdf, step=err.step, outcome="stuck", reason=reason)
        return Outcome(
            bdf,
            Status.FAILED,
            None,
            reason,
            err.remedy,
            err.step,
            None,
            restored_to=None,
            writes=writes,
            journal=_kept(entry),
            stuck=True,
        )

    def _reattach(
        self,
        address: PciAddress,
        driver: str,
        override: Optional[str],
        bounded: Callable[[str, Callable[[], object]], None],
        deadline_at: float,
    ) -> None:
        """Reattach ``driver`` whatever drivers_probe picks: the probe first; another driver
        it attached is taken off; then an explicit bind, and when ``driver`` does not match
        the function by ID (ENODEV: pci-stub without a dynamic ID), once more with the
        override naming it, put back to ``override`` after (its error is the one reported)."""
        kernel = self.kernel
        try:
            bounded("probe", lambda: kernel.probe(address))
        except SysfsWriteError as err:
            log.warning(
                "restore", bdf=str(address), step="probe", outcome="failed", reason=err.message
            )
        picked = kernel.driver_of(address)
        if picked == driver:
            return
        if picked is not None:
            bounded("unbind", lambda: kernel.unbind(address, picked))
        try:
            self._bind_once(address, driver, deadline_at, "bind")
        except SysfsWriteError as err:
            if err.errno != errno_mod.ENODEV or override == driver or not kernel.exists(address):
                raise
            bounded("set-override", lambda: kernel.set_override(address, driver))
            try:
                self._bind_once(address, driver, deadline_at, "bind")
            finally:
                if override is None:
                    bounded("clear-override", lambda: kernel.clear_override(address))
                else:
                    bounded("set-override", lambda: kernel.set_override(address, override))

    def _restore(
        self, address: PciAddress, *, start_driver: Optional[str], start_override: Optional[str]
    ) -> tuple[str, Optional[str]]:
        """Put override and driver back to a known start state; never raise.

        Returns a label of where the function is now and, when that is not the start state,
        a note saying so. The start state is the plan's, or the journal's originals when the
        entry settles an interrupted run.
        """
        kernel = self.kernel
        deadline_at = self.clock() + self.write_timeout

        def bounded(step: str, fn: Callable[[], object]) -> None:
            self._bounded(address, step, f"restore {address}: {step}", fn, deadline_at)

        try:
            if kernel.override_of(address) != start_override:
                if start_override is None:
                    bounded("clear-override", lambda: kernel.clear_override(address))
                else:
                    bounded("set-override", lambda: kernel.set_override(address, start_override))
            current = kernel.driver_of(address)
            if current != start_driver:
                if current is not None:
                    bounded("unbind", lambda: kernel.unbind(address, current))
                if start_driver is not None:
                    self._reattach(address, start_driver, start_override, bounded, deadline_at)
        except VfioManagerError as err:
            now = kernel.driver_of(address)
            return (
                _driver_label(now),
                f"could not restore it ({err.message}); now on {_driver_label(now)}",
            )
        now = kernel.driver_of(address)
        label = f"{_driver_label(now)} (override {kernel.override_of(address) or 'unset'})"
        if now != start_driver:
            return label, f"could not restore {_driver_label(start_driver)}; now on {label}"
        return label, None

"""Applies a plan: each function's steps, verified, its /dev/vfio node awaited, a failure undone.

One function failing never stops the others. IOMMU groups move side by side; the nodes are
awaited together after the writes, under one deadline.
"""

from __future__ import annotations

import contextlib
import enum
import errno as errno_mod
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Optional, Union

from vfio_manager.errors import ExitCode, SysfsWriteError, TransitionError, VfioManagerError
from vfio_manager.host.dynamic_ids import remove_id_remedy
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import STAY_UNBOUND, Direction, is_vfio_driver
from vfio_manager.kernel.inventory import not_responding_remedy
from vfio_manager.kernel.verbs import Kernel
from vfio_manager.log import get_logger
from vfio_manager.pipeline.node import DEFAULT_PARALLEL, DEFAULT_WRITE_TIMEOUT
from vfio_manager.pipeline.plan import Action, FunctionPlan, Plan, Step
from vfio_manager.safety.writer import Deadline, DeadlineExceededError, bounded

if TYPE_CHECKING:
    from vfio_manager.safety.journal import Journal

log = get_logger("vfio_manager.pipeline.engine")

_POLL_INTERVAL = 0.05
_BIND_ERRNO_HINTS = {
    errno_mod.EINVAL: "the driver refused the function at probe (no IOMMU group, a bridge, or a "
    "denylisted ID; dmesg shows 'probe ... failed with error -22')",
    errno_mod.EBUSY: "the function is busy (an SR-IOV PF with VFs enabled, or bound meanwhile)",
    errno_mod.ENODEV: "the driver does not match it (driver_override names another driver) or "
    "the function is gone",
}
_HOT_UNPLUG = "check `dmesg` for a hot-unplug or a surprise removal"
_DIED = "stopped responding during the transition (its config space reads all-ones)"


class Result(str, enum.Enum):
    CHANGED = "changed"
    CONVERGED = "converged"
    REFUSED = "refused"
    FAILED = "failed"


@dataclass(frozen=True)
class Outcome:
    """What happened to one function; ``restored_to`` is set when a failure was undone."""

    bdf: str
    result: Result
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
        doc = {**asdict(self), "result": self.result.value}
        doc["errno"] = errno_mod.errorcode.get(self.errno) if self.errno else None
        del doc["stuck"]
        return {("outcome" if key == "result" else key): value for key, value in doc.items()}


_Moved = Union["Outcome", tuple[int, int]]  # an outcome, or a node to await: IOMMU group, writes
_Waiting = tuple[FunctionPlan, int, int]


@dataclass(frozen=True)
class Report:
    direction: Direction
    outcomes: tuple[Outcome, ...]

    @property
    def exit_code(self) -> ExitCode:
        done = (Result.CHANGED, Result.CONVERGED)
        ok = all(o.result in done and o.journal_error is None for o in self.outcomes)
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


class Interruption:
    """The signal (SIGINT, SIGTERM) that asked a writing run to stop, if one did: the run
    finishes the function each lane is moving, starts no other, reports, and the command
    exits 128 + its number."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    @classmethod
    @contextlib.contextmanager
    def caught(cls) -> Iterator[Interruption]:
        """SIGINT and SIGTERM set ``signum`` instead of ending the process while the block
        runs (from the main thread: elsewhere a signal handler cannot be set)."""
        interruption = cls()

        def on_signal(signum: int, _frame: object) -> None:
            interruption.signum = interruption.signum or signum

        if threading.current_thread() is not threading.main_thread():
            yield interruption
            return
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield interruption
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def describe(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name if self.signum else '?'}"


def _kept(entry: FunctionPlan) -> Optional[str]:
    """What the outcome of an entry that did not settle its journal record says of it."""
    note = entry.interrupted.note if entry.interrupted is not None else None
    return None if note is None else f"{note}: not settled, the journal record is kept"


def _label(driver: Optional[str]) -> str:
    return driver if driver is not None else "no driver"


class Engine:
    """Runs plans against the kernel, each function's writes under ``write_timeout``."""

    def __init__(
        self,
        kernel: Kernel,
        *,
        node_timeout: float = 10.0,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        journal: Optional[Journal] = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        parallel: int = DEFAULT_PARALLEL,
        interruption: Optional[Interruption] = None,
    ) -> None:
        self.kernel, self.journal, self.parallel = kernel, journal, parallel
        self.interruption = interruption or Interruption()
        self.node_timeout, self.write_timeout = node_timeout, write_timeout
        self.clock, self.sleep = clock, sleep
        self._probe_picked: dict[PciAddress, tuple[str, Optional[str]]] = {}  # taken off again
        self._stuck: set[PciAddress] = set()  # a write still pending: written to no more

    def apply(self, plan: Plan) -> Report:
        """Move what the plan moves (an IOMMU group's functions one after another), then
        await every node."""
        outcomes: dict[PciAddress, Outcome] = {}
        lanes: dict[object, list[FunctionPlan]] = {}
        for entry in plan.entries:
            bdf, driver = entry.function.bdf, entry.function.driver
            if entry.refusal is not None:
                log.warning(
                    "refused", bdf=bdf, step="plan", outcome="refused", reason=entry.refusal
                )
                outcomes[entry.address] = Outcome(
                    bdf, Result.REFUSED, driver, entry.refusal, entry.remedy, journal=_kept(entry)
                )
            elif entry.converged:  # debug: the common case, and a quiet run loads no logging
                log.debug("converged", bdf=bdf, step="plan", outcome="converged", driver=driver)
                converged = Outcome(bdf, Result.CONVERGED, driver)
                outcomes[entry.address] = self._close_record(entry, converged)
            else:
                group = entry.function.iommu_group
                lanes.setdefault(entry.address if group is None else group, []).append(entry)
        waiting: dict[PciAddress, _Waiting] = {}
        for entry, moved in self._run_lanes(list(lanes.values())):
            if isinstance(moved, Outcome):
                outcomes[entry.address] = moved
            else:
                waiting[entry.address] = (entry, *moved)
        outcomes.update(self._wait_for_nodes(waiting))
        return Report(plan.direction, tuple(outcomes[e.address] for e in plan.entries))

    def _run_lanes(self, lanes: list[list[FunctionPlan]]) -> list[tuple[FunctionPlan, _Moved]]:
        def run(lane: list[FunctionPlan]) -> list[tuple[FunctionPlan, _Moved]]:
            return [(entry, self._move(entry)) for entry in lane]

        if len(lanes) <= 1 or self.parallel <= 1:
            return [item for lane in lanes for item in run(lane)]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(
            max_workers=min(self.parallel, len(lanes)), thread_name_prefix="vfio-manager-lane"
        ) as pool:
            return [item for done in pool.map(run, lanes) for item in done]

    def _move(self, entry: FunctionPlan) -> _Moved:
        """One function's writes: its outcome, or what to wait for (IOMMU group, writes)."""
        bdf = entry.function.bdf
        if self.interruption.signum is not None:
            reason = f"not started: the run was {self.interruption.describe()}"
            remedy = "run the command again to move it"
            return self._left(entry, "interrupted", reason, remedy, 0, driver=entry.function.driver)
        # a PF's SR-IOV entry: its SR-IOV origin is on file already (the transition's stage)
        record = not any(step.value is not None for step in entry.steps)
        if self.journal is not None and entry.write_count and not entry.interrupted and record:
            try:
                self.journal.record_start(entry.function, entry.direction)
            except VfioManagerError as err:  # no record, no write
                reason = f"its journal record could not be written: {err.message}"
                driver = entry.function.driver
                return self._left(entry, "journal", reason, err.remedy, 0, err.errno, driver)
        before = self.kernel.sysfs.writes_to(bdf)
        try:
            wait = self._run_steps(entry)
        except DeadlineExceededError as err:  # touched no more: an undo would queue behind it
            writes = self.kernel.sysfs.writes_to(bdf) - before
            return self._left(entry, err.step, err.message, err.remedy, writes, stuck=True)
        except VfioManagerError as err:
            return self._fail(entry, err, self.kernel.sysfs.writes_to(bdf) - before)
        writes = self.kernel.sysfs.writes_to(bdf) - before
        if wait is not None and wait.group is not None:
            return (wait.group, writes)
        return self._done(entry, writes)

    def _run_steps(self, entry: FunctionPlan) -> Optional[Step]:
        """Run the writing and verifying steps; return the wait step, if any, for later."""
        address = entry.address
        deadline_at = self.clock() + self.write_timeout
        wait: Optional[Step] = None
        wrote = False
        for step in entry.steps:
            action, driver = step.action, step.driver
            if action is Action.WAIT_VFIO_NODE:
                wait = step
                continue
            if wrote and step.writes and self.kernel.sysfs.config_all_ones(address):
                raise TransitionError(
                    f"{address} {_DIED}; not written: {step.describe()}",
                    errno=errno_mod.EIO,
                    step=action.value,
                    bdf=str(address),
                )
            wrote = wrote or step.writes
            try:
                if action is Action.VERIFY_DRIVER:
                    self._verify(address, driver, deadline_at)
                elif driver is not None or action not in (Action.SET_OVERRIDE, Action.UNBIND):
                    self._write(address, action.value, driver, deadline_at, value=step.value)
            except VfioManagerError as err:
                err.step = err.step or action.value
                err.bdf = str(address)
                raise
            log.info("step", bdf=str(address), step=action.value, outcome="done", driver=driver)
        if wrote and self.kernel.sysfs.config_all_ones(address):
            raise TransitionError(f"{address} {_DIED}", errno=errno_mod.EIO, bdf=str(address))
        return wait

    def _write(
        self,
        address: PciAddress,
        verb: str,
        driver: Optional[str],
        deadline_at: float,
        *,
        step: Optional[str] = None,
        what: Optional[str] = None,
        value: Optional[int] = None,
    ) -> None:
        """One kernel verb (an action's name, or ``bind``) under the function's deadline;
        transient errnos retried, but from a function that is gone or for a bind (its errno
        is the diagnosis). None after a write about the function stuck: it would queue."""
        kernel, name, step = self.kernel, driver or "", step or verb
        if address in self._stuck:
            raise DeadlineExceededError(
                f"{what or verb}: not written, a write about {address} is still pending",
                bdf=str(address),
                step=step,
            )
        calls: dict[str, tuple[str, Callable[[], object]]] = {
            "set-override": (
                f"set the override of {address} to {driver}",
                lambda: kernel.set_override(address, name),
            ),
            "clear-override": (
                f"clear the override of {address}",
                lambda: kernel.clear_override(address),
            ),
            "unbind": (f"unbind {address} from {driver}", lambda: kernel.unbind(address, name)),
            "probe": (f"probe {address}", lambda: kernel.probe(address)),
            "bind": (f"bind {address} to {driver}", lambda: kernel.bind(address, name)),
            "sriov-autoprobe": (
                f"set sriov_drivers_autoprobe of {address} to {value}",
                lambda: kernel.set_sriov_autoprobe(address, bool(value)),
            ),
            "sriov-numvfs": (
                f"set sriov_numvfs of {address} to {value}",
                lambda: kernel.set_sriov_numvfs(address, value or 0),
            ),
        }
        default, fn = calls[verb]

        def write() -> None:
            try:
                fn()
            except SysfsWriteError as err:
                gone = err.errno in (errno_mod.ENODEV, errno_mod.ENOENT)
                if gone and not kernel.exists(address):
                    raise TransitionError(
                        f"{address} disappeared during {step}", errno=err.errno
                    ) from err
                raise

        retry = verb not in ("bind", "sriov-numvfs")  # their errno is the diagnosis
        deadline = Deadline(deadline_at, what or default, str(address), step, self.clock)
        try:
            bounded(write if retry else fn, deadline, retry=retry, sleep=self.sleep)
        except DeadlineExceededError:
            self._stuck.add(address)
            raise

    def _take_off(
        self, address: PciAddress, picked: str, expected: Optional[str], deadline_at: float
    ) -> None:
        """drivers_probe attached ``picked``, not ``expected``: unbind it, and say so later."""
        what = f"unbind {address} from {picked} (drivers_probe's choice)"
        self._write(address, "unbind", picked, deadline_at, what=what)
        self._probe_picked[address] = (picked, expected)
        log.warning(
            "drivers_probe picked another driver",
            bdf=str(address),
            step=Action.VERIFY_DRIVER.value,
            driver=picked,
            expected=expected,
        )

    def _verify(self, address: PciAddress, expected: Optional[str], deadline_at: float) -> None:
        """Read the driver link back. Another driver drivers_probe attached (a dynamic ID, or
        registered first) is taken off; an absent expected one is bound explicitly (its
        errno says why it refuses)."""
        current = self.kernel.driver_of(address)
        if expected == STAY_UNBOUND:
            if current is not None:
                raise TransitionError(f"{address} is on {current}; it was expected to stay unbound")
            return
        if expected is None:  # no host driver is known: driverless is where the kernel leaves it
            if current is not None and is_vfio_driver(current):
                self._take_off(address, current, None, deadline_at)
            return
        if current == expected:
            return
        if current is not None:
            self._take_off(address, current, expected, deadline_at)
        if not self.kernel.exists(address):
            raise TransitionError(f"{address} disappeared", errno=errno_mod.ENODEV)
        try:
            self._write(address, "bind", expected, deadline_at, step=Action.VERIFY_DRIVER.value)
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
    def _close_record(
        self, entry: FunctionPlan, outcome: Outcome, *, back: bool = False
    ) -> Outcome:
        """Drop the journal record of a function at its target (or ``back`` where it started)."""
        if self.journal is None or (not (back or outcome.writes) and entry.interrupted is None):
            return outcome
        note = entry.interrupted.note if entry.interrupted is not None else None
        try:
            self.journal.drop_transition(entry.function.bdf)
        except VfioManagerError as err:
            log.error(
                "journal", bdf=entry.function.bdf, step="journal", outcome="failed", reason=err
            )
            problem = f"{err.message} (remedy: {err.remedy})" if err.remedy else err.message
            return replace(outcome, journal=note, journal_error=problem)
        return replace(outcome, journal=note)

    def _done(self, entry: FunctionPlan, writes: int) -> Outcome:
        driver = self.kernel.driver_of(entry.address)
        result = Result.CHANGED if writes else Result.CONVERGED
        bdf = entry.function.bdf
        log.info(
            "transition", bdf=bdf, step="done", outcome=result.value, driver=driver, writes=writes
        )
        reason = remedy = None
        picked = self._probe_picked.pop(entry.address, None)
        if picked is not None:  # say why drivers_probe picked another driver on the way
            (driver_picked, expected), function = picked, entry.function
            ids = f"{function.vendor:04x}:{function.device:04x}"
            why = (
                f"{driver_picked} has a dynamic ID for {ids} (new_id or {driver_picked}.ids=)"
                if is_vfio_driver(driver_picked)
                else f"{driver_picked} claims {ids} (a dynamic ID, or it was registered first)"
            )
            then = f"bound {expected} explicitly" if expected else "left it unbound"
            reason = f"drivers_probe picked {driver_picked}: {why}; took it off and {then}"
            remedy = remove_id_remedy(driver_picked, function.vendor, function.device)
        outcome = Outcome(bdf, result, driver, reason, remedy, writes=writes)
        return self._close_record(entry, outcome)

    def _wait_for_nodes(self, waiting: dict[PciAddress, _Waiting]) -> dict[PciAddress, Outcome]:
        """Wait for every /dev/vfio/N at once, under one deadline (not for a function gone); a
        function's device cdev does as well (a kernel without VFIO_GROUP has no /dev/vfio/N)."""
        results: dict[PciAddress, Outcome] = {}
        deadline = self.clock() + self.node_timeout
        step = Action.WAIT_VFIO_NODE.value
        sysfs = self.kernel.sysfs
        while waiting:
            for address, (entry, group, writes) in list(waiting.items()):
                if sysfs.vfio_dev_exists(group) or sysfs.vfio_cdev_of(address) is not None:
                    results[address] = self._done(entry, writes)
                elif not self.kernel.exists(address):
                    self._probe_picked.pop(address, None)
                    node = self.kernel.sysfs.vfio_dev_path(group)
                    reason = f"{address} was removed (hot-unplug) while waiting for {node}"
                    remedy = f"{_HOT_UNPLUG}; after a rescan, run the command again"
                    results[address] = self._left(
                        entry, step, reason, remedy, writes, errno_mod.ENODEV
                    )
                else:
                    continue
                del waiting[address]
            if not waiting or self.clock() >= deadline:
                break
            self.sleep(_POLL_INTERVAL)
        for address, (entry, group, writes) in waiting.items():
            driver = self.kernel.driver_of(address)
            node = self.kernel.sysfs.vfio_dev_path(group)
            reason = f"bound to {driver}, but {node} did not appear within {self.node_timeout:g}s"
            remedy = (
                "in a container, mount the host's /dev (the node is created by devtmpfs/udev "
                "on the host); raise --timeout on slow hosts"
            )
            results[address] = self._left(entry, step, reason, remedy, writes, driver=driver)
        return results

    @staticmethod
    def _left(
        entry: FunctionPlan,
        step: Optional[str],
        reason: str,
        remedy: Optional[str],
        writes: int,
        errno: Optional[int] = None,
        driver: Optional[str] = None,
        *,
        stuck: bool = False,
    ) -> Outcome:
        """A function left as it is (its journal record refused, a write stuck, no node, the
        run interrupted before it)."""
        refused = step == "journal"
        event, outcome = ("refused", "refused") if refused else ("transition", "failed")
        outcome = "stuck" if stuck else outcome
        log.error(event, bdf=entry.function.bdf, step=step, outcome=outcome, reason=reason)
        return Outcome(
            entry.function.bdf,
            Result.REFUSED if refused else Result.FAILED,
            driver,
            reason,
            remedy,
            step,
            errno,
            writes=writes,
            journal=_kept(entry),
            stuck=stuck,
        )

    def _fail(self, entry: FunctionPlan, err: VfioManagerError, writes: int) -> Outcome:
        """A step failed: put the function back to its start state."""
        bdf = entry.function.bdf
        self._probe_picked.pop(entry.address, None)
        log.error("transition", bdf=bdf, step=err.step, outcome="failed", reason=err.message)
        outcome = Outcome(
            bdf, Result.FAILED, None, step=err.step, errno=err.errno, journal=_kept(entry)
        )
        if not self.kernel.exists(entry.address):
            reason = f"{err.message}; the function disappeared"
            return replace(outcome, reason=reason, remedy=_HOT_UNPLUG, writes=writes)
        if self.kernel.sysfs.config_all_ones(entry.address):  # no undo: never written again
            reason = err.message if _DIED in err.message else f"{err.message}; {bdf} {_DIED}"
            remedy = not_responding_remedy(bdf)
            driver = self.kernel.driver_of(entry.address)
            return replace(outcome, reason=reason, remedy=remedy, writes=writes, driver=driver)
        before = self.kernel.sysfs.writes_to(bdf)
        restored, note = self._restore(entry.address, *entry.start_state)
        writes += self.kernel.sysfs.writes_to(bdf) - before
        done = "restored" if note is None else "incomplete"
        log.warning("rollback", bdf=bdf, step="restore", outcome=done, restored_to=restored)
        outcome = replace(
            outcome,
            driver=self.kernel.driver_of(entry.address),
            reason=err.message if note is None else f"{err.message}; {note}",
            remedy=err.remedy,
            restored_to=restored,
            writes=writes,
            stuck=entry.address in self._stuck,
        )
        # back in its start state: the record has nothing left to settle
        return self._close_record(entry, outcome, back=True) if note is None else outcome

    def _restore(
        self, address: PciAddress, driver: Optional[str], override: Optional[str]
    ) -> tuple[str, Optional[str]]:
        """Put override and driver back; never raise. Returns where the function is now and,
        when that is not the start state, a note saying so."""
        kernel = self.kernel
        deadline_at = self.clock() + self.write_timeout

        def write(verb: str, value: Optional[str] = None) -> None:
            self._write(address, verb, value, deadline_at, what=f"restore {address}: {verb}")

        try:
            if kernel.override_of(address) != override:
                write("clear-override" if override is None else "set-override", override)
            current = kernel.driver_of(address)
            if current != driver and current is not None:
                write("unbind", current)
            if current != driver and driver is not None:
                self._reattach(address, driver, override, write, deadline_at)
        except VfioManagerError as err:
            where = _label(kernel.driver_of(address))
            return where, f"could not restore it ({err.message}); now on {where}"
        now = kernel.driver_of(address)
        label = f"{_label(now)} (override {kernel.override_of(address) or 'unset'})"
        if now != driver:
            return label, f"could not restore {_label(driver)}; now on {label}"
        return label, None

    def _reattach(
        self,
        address: PciAddress,
        driver: str,
        override: Optional[str],
        write: Callable[[str, Optional[str]], None],
        deadline_at: float,
    ) -> None:
        """Reattach ``driver`` whatever drivers_probe picks (another driver it attached is
        taken off) by an explicit bind; when ``driver`` does not match by ID (ENODEV: pci-stub
        without a dynamic ID), once more with the override naming it, put back after."""
        try:
            write("probe", None)
        except SysfsWriteError as err:
            log.warning(
                "restore", bdf=str(address), step="probe", outcome="failed", reason=err.message
            )
        picked = self.kernel.driver_of(address)
        if picked == driver:
            return
        if picked is not None:
            write("unbind", picked)
        try:
            self._write(address, "bind", driver, deadline_at)
        except SysfsWriteError as err:
            exists = self.kernel.exists(address)
            if err.errno != errno_mod.ENODEV or override == driver or not exists:
                raise
            write("set-override", driver)
            try:
                self._write(address, "bind", driver, deadline_at)
            finally:
                write("clear-override" if override is None else "set-override", override)

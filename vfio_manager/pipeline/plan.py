"""Plans: the pure difference between what sysfs shows and where each function should be.

No I/O, so ``--dry-run`` and every writing command share it; a converged function gets no
steps. What the journal asks to finish or undo (:func:`settle`) is one more input.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Optional

from vfio_manager.host.driver_choice import HostTarget
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import STAY_UNBOUND, VFIO_PCI, Direction, is_vfio_driver
from vfio_manager.kernel.inventory import NOT_RESPONDING, not_responding_remedy
from vfio_manager.kernel.model import PciFunction, Topology
from vfio_manager.kernel.viability import group_blockers
from vfio_manager.pipeline.selection import Selector

if TYPE_CHECKING:
    from vfio_manager.safety.journal import JournalEntry


class Action(str, enum.Enum):
    SET_OVERRIDE = "set-override"
    CLEAR_OVERRIDE = "clear-override"
    UNBIND = "unbind"
    PROBE = "probe"
    VERIFY_DRIVER = "verify-driver"
    WAIT_VFIO_NODE = "wait-vfio-node"
    SRIOV_AUTOPROBE = "sriov-autoprobe"  # a PF's, for the VFs it creates next
    SRIOV_NUMVFS = "sriov-numvfs"


@dataclass(frozen=True)
class Step:
    """One kernel operation; ``driver`` is the override value, the driver left or expected;
    ``value`` a PF's autoprobe (0, 1) or number of VFs."""

    action: Action
    driver: Optional[str] = None
    group: Optional[int] = None
    value: Optional[int] = None

    @property
    def writes(self) -> bool:
        return self.action not in (Action.VERIFY_DRIVER, Action.WAIT_VFIO_NODE)

    def describe(self) -> str:
        if self.action is Action.VERIFY_DRIVER:
            if self.driver == STAY_UNBOUND:
                return "check the function has no driver (it had none before)"
            return f"check the driver link is {self.driver or 'not a vfio driver'}"
        return {
            Action.SET_OVERRIDE: f"write {self.driver!r} to driver_override",
            Action.CLEAR_OVERRIDE: "clear driver_override (write '\\n')",
            Action.UNBIND: f"unbind from {self.driver}",
            Action.PROBE: "write the address to drivers_probe",
            Action.SRIOV_AUTOPROBE: f"write {self.value} to sriov_drivers_autoprobe",
            Action.SRIOV_NUMVFS: f"write {self.value} to sriov_numvfs",
        }.get(self.action, f"wait for /dev/vfio/{self.group}")

    def to_json(self) -> dict[str, Any]:
        doc = {"action": self.action.value, "driver": self.driver, "group": self.group}
        return doc if self.value is None else {**doc, "value": self.value}


class RefusalKind(str, enum.Enum):
    """Why a function is refused, for callers that act on the kind (the daemon)."""

    KERNEL = "kernel"  # the kernel refuses it whatever we do: a bridge, no group, a PF with VFs
    GROUP = "group"  # its IOMMU group cannot be handed over: a peer on a host driver, or refused
    IN_USE = "in-use"  # a process holds it
    HOST_CRITICAL = "host-critical"  # the host needs it: a disk, an interface, the console
    JOURNAL = "journal"  # a journal record for it that this run cannot settle
    NOT_RESPONDING = "not-responding"  # its config space reads all-ones: never written


class Settle(str, enum.Enum):
    """What this run does with a journal record an interrupted run left for the function."""

    FINISH = "finish"  # take the interrupted transition the rest of the way
    ROLL_BACK = "roll-back"  # put the function back as it was before the interrupted run


@dataclass(frozen=True)
class Interrupted:
    """A journal record this entry settles: how, why, and the state before it."""

    settle: Settle
    note: str
    original_driver: Optional[str]
    original_override: Optional[str]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "settle": self.settle.value}


@dataclass(frozen=True)
class FunctionPlan:
    """Steps for one function, or the reason it is refused (then it has none)."""

    function: PciFunction
    direction: Direction
    steps: tuple[Step, ...] = ()
    refusal: Optional[str] = None
    remedy: Optional[str] = None
    refusal_kind: Optional[RefusalKind] = None
    target_driver: Optional[str] = None
    target_override: Optional[str] = None
    interrupted: Optional[Interrupted] = None

    @property
    def start_state(self) -> tuple[Optional[str], Optional[str]]:
        """(driver, override) a failure puts back: before the interrupted run, if any."""
        if self.interrupted is not None:
            return self.interrupted.original_driver, self.interrupted.original_override
        return self.function.driver, self.function.driver_override

    @property
    def address(self) -> PciAddress:
        return self.function.address

    @property
    def converged(self) -> bool:
        return self.refusal is None and not self.steps

    @property
    def write_count(self) -> int:
        return sum(1 for step in self.steps if step.writes)

    def to_json(self) -> dict[str, Any]:
        return {
            "bdf": self.function.bdf,
            "direction": self.direction.value,
            "driver": self.function.driver,
            "driver_override": self.function.driver_override,
            "target_driver": self.target_driver,
            "target_override": self.target_override,
            "converged": self.converged,
            "refused": self.refusal,
            "remedy": self.remedy,
            "steps": [step.to_json() for step in self.steps],
            "journal": self.interrupted.to_json() if self.interrupted is not None else None,
        }


@dataclass(frozen=True)
class Plan:
    direction: Direction
    entries: tuple[FunctionPlan, ...] = ()

    @property
    def write_count(self) -> int:
        return sum(entry.write_count for entry in self.entries)

    def to_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction.value,
            "writes": self.write_count,
            "functions": [entry.to_json() for entry in self.entries],
        }


def _to_vfio_steps(function: PciFunction, vfio_driver: str, has_node: bool) -> tuple[Step, ...]:
    """Override first (closes the window for the old driver), unbind, probe, verify, wait."""
    steps: list[Step] = []
    if function.driver_override != vfio_driver:
        steps.append(Step(Action.SET_OVERRIDE, vfio_driver))
    if function.driver != vfio_driver:
        if function.driver is not None:
            steps.append(Step(Action.UNBIND, function.driver))
        steps += [Step(Action.PROBE), Step(Action.VERIFY_DRIVER, vfio_driver)]
    if steps or not has_node:
        steps.append(Step(Action.WAIT_VFIO_NODE, group=function.iommu_group))
    return tuple(steps)


def _refusal_to_vfio(
    topology: Topology, function: PciFunction, moving: Collection[PciAddress]
) -> Optional[tuple[str, str, RefusalKind]]:
    """Why the function cannot move to vfio, the remedy, and whose the refusal is."""
    if function.is_bridge:
        return (
            "it is a PCI bridge; vfio-pci refuses bridges",
            "select endpoint functions only (filter by --class)",
            RefusalKind.KERNEL,
        )
    if function.iommu_group is None:
        return (
            "it has no IOMMU group (the IOMMU is off or the kernel lacks support)",
            "run `vfio-manager check` for the cause and the kernel argument to add",
            RefusalKind.KERNEL,
        )
    if function.is_pf_with_vfs:
        return (
            f"it is an SR-IOV PF with {function.sriov_numvfs} VFs enabled; vfio-pci refuses it",
            "bind its VFs instead (select them with --device-id), or set sriov_numvfs to 0 first",
            RefusalKind.KERNEL,
        )
    blockers = group_blockers(topology, function, moving=moving)
    if blockers:
        return (
            f"IOMMU group {function.iommu_group} is not viable: "
            + ", ".join(str(b) for b in blockers),
            "add --with-group-peers to bind the other endpoint members too, or unbind the "
            "blocking members from their host drivers first",
            RefusalKind.GROUP,
        )
    return None


def plan_to_vfio(
    topology: Topology,
    targets: Iterable[PciFunction],
    *,
    selector: Selector,
    named: Collection[PciAddress] = (),
    with_group_peers: bool = False,
    vfio_driver_for: Callable[[PciFunction], str] = lambda _f: VFIO_PCI,
    exclude: Collection[PciAddress] = (),
) -> Plan:
    """Plan moving ``targets`` to their vfio driver; ``with_group_peers`` adds the selected
    or named members that would block their groups."""
    ordered = list(targets)
    moving = {f.address for f in ordered}
    if with_group_peers:
        for function in list(ordered):
            for blocker in group_blockers(topology, function, moving=moving):
                peer = topology.functions[blocker.address]
                wanted = selector.matches(peer) or peer.address in named
                if not peer.is_bridge and wanted and peer.address not in exclude:
                    ordered.append(peer)
                    moving.add(peer.address)
    entries: list[FunctionPlan] = []
    refused: set[PciAddress] = set()
    for function in ordered:
        vfio_driver = vfio_driver_for(function)
        refusal = _refusal_to_vfio(topology, function, moving)
        if refusal is not None:
            refused.add(function.address)
            entries.append(FunctionPlan(function, Direction.TO_VFIO, (), *refusal, vfio_driver))
            continue
        node, cdev = topology.vfio_dev(function), topology.vfio_cdev(function)
        steps = _to_vfio_steps(function, vfio_driver, node is not None or cdev is not None)
        entry = FunctionPlan(function, Direction.TO_VFIO, steps)
        entries.append(replace(entry, target_driver=vfio_driver, target_override=vfio_driver))
    return Plan(Direction.TO_VFIO, tuple(refuse_group_mates(entries, refused)))


def refuse_not_responding(plan: Plan, dead: Collection[PciAddress]) -> Plan:
    """Refuse every ``dead`` function (it reads all-ones), converged or not, and its group
    mates: writing to it helps nothing and can wedge the driver core (no ``--force`` here)."""
    dead = {e.address for e in plan.entries if e.refusal is None and e.address in dead}
    if not dead:
        return plan
    entries = [e if e.address not in dead else _refused_not_responding(e) for e in plan.entries]
    return Plan(plan.direction, tuple(refuse_group_mates(entries, dead)))


def _refused_not_responding(entry: FunctionPlan) -> FunctionPlan:
    remedy = not_responding_remedy(entry.function.bdf)
    kind = RefusalKind.NOT_RESPONDING
    return replace(entry, steps=(), refusal=NOT_RESPONDING, remedy=remedy, refusal_kind=kind)


def refuse_group_mates(entries: list[FunctionPlan], refused: set[PciAddress]) -> list[FunctionPlan]:
    """A group moves whole or not at all: if one member is refused, its movers are refused too."""
    refused_in: dict[Optional[int], list[PciAddress]] = {None: []}
    for entry in entries:
        if entry.address in refused and entry.function.iommu_group is not None:
            refused_in.setdefault(entry.function.iommu_group, []).append(entry.address)
    result: list[FunctionPlan] = []
    for entry in entries:
        group = entry.function.iommu_group
        mates = [str(a) for a in refused_in.get(group, []) if a != entry.address]
        if entry.refusal is None and entry.steps and mates:
            entry = FunctionPlan(  # noqa: PLW2901 - the refused replacement of this entry
                entry.function,
                entry.direction,
                refusal=f"IOMMU group {group} member {', '.join(mates)} is refused, so the "
                "group cannot be handed over",
                remedy="resolve the refusal of that member first",
                refusal_kind=RefusalKind.GROUP,
                target_driver=entry.target_driver,
            )
        result.append(entry)
    return result


def _override_step(override: Optional[str]) -> Step:
    return Step(Action.CLEAR_OVERRIDE) if override is None else Step(Action.SET_OVERRIDE, override)


def host_steps(
    function: PciFunction,
    driver: Optional[str],
    override: Optional[str],
    *,
    probe_picks: bool = True,
) -> tuple[Step, ...]:
    """Steps to ``driver`` (``None``: whatever the probe picks; :data:`STAY_UNBOUND`: none)
    and ``override``. Unless ``probe_picks``, the override names ``driver`` for the probe and
    is set to ``override`` after."""
    on_vfio = is_vfio_driver(function.driver)
    if driver is None:
        attach = detach = on_vfio
    elif driver == STAY_UNBOUND:
        attach, detach = False, function.driver is not None
    else:
        attach = function.driver != driver
        detach = attach and function.driver is not None
    pin = attach and driver is not None and override != driver and not probe_picks
    during = driver if pin else override
    steps: list[Step] = []
    if function.driver_override != during:
        steps.append(_override_step(during))
    if detach:
        steps.append(Step(Action.UNBIND, function.driver))
    if driver == STAY_UNBOUND:
        if detach:
            steps.append(Step(Action.VERIFY_DRIVER, STAY_UNBOUND))
    elif attach:
        steps += [Step(Action.PROBE), Step(Action.VERIFY_DRIVER, driver)]
    if pin:
        steps.append(_override_step(override))
    return tuple(steps)


def in_vfio_mode(function: PciFunction) -> bool:
    """On a vfio driver, or pinned to one by its override (bound or not)."""
    return is_vfio_driver(function.driver) or is_vfio_driver(function.driver_override)


def restore_steps(
    function: PciFunction,
    driver: Optional[str],
    override: Optional[str],
    *,
    probe_picks: bool = True,
) -> tuple[Step, ...]:
    """Steps back to a recorded (driver, override) (``driver`` ``None``: it had none)."""
    if is_vfio_driver(driver):
        return _to_vfio_steps(function, driver or VFIO_PCI, has_node=True)
    return host_steps(
        function, STAY_UNBOUND if driver is None else driver, override, probe_picks=probe_picks
    )


def plan_to_host(
    topology: Topology,
    targets: Iterable[PciFunction],
    *,
    host_target_for: Callable[[PciFunction], HostTarget],
    settling: Collection[PciAddress] = (),
) -> Plan:
    """Plan returning ``targets`` to the host state each was found in; one in ``settling``
    goes there from wherever an interrupted run left it."""
    del topology  # the reverse move has no group constraint
    entries = []
    for function in targets:
        target = host_target_for(function)
        driver, override = target.driver, target.override
        # one on the host stays, but a driverless one without override whose driver is known
        # (left so by an earlier tool); one settling goes on from wherever it was left
        left = function.driver is None and function.driver_override is None
        known = driver not in (None, STAY_UNBOUND)
        moves = function.address in settling or in_vfio_mode(function) or (left and known)
        steps = host_steps(function, driver, override, probe_picks=target.probe_picks)
        entry = FunctionPlan(function, Direction.TO_HOST, steps if moves else ())
        entries.append(replace(entry, target_driver=driver, target_override=override))
    return Plan(Direction.TO_HOST, tuple(entries))


# -- what the journal asks: settling the records of interrupted runs --------------------
_VERB = {Direction.TO_VFIO: "bind to vfio", Direction.TO_HOST: "return to the host"}


@dataclass
class Settlement:
    """The journal's share of a plan: ``interrupted`` for targets' entries (with
    ``extra_targets``), ``entries`` (roll-backs and refusals), ``moot`` records."""

    interrupted: dict[PciAddress, Interrupted] = field(default_factory=dict)
    extra_targets: list[PciFunction] = field(default_factory=list)
    entries: list[FunctionPlan] = field(default_factory=list)
    moot: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _refuse_newer(
    result: Settlement, entry: JournalEntry, topology: Topology, direction: Direction
) -> None:
    """A later release's record: the function is refused, the record kept as it is."""
    from vfio_manager.safety.journal import NEWER_REMEDY

    function = topology.functions.get(PciAddress.parse(entry.bdf or ""))
    reason = f"a journal record for it was {entry.problem}"
    if function is None:
        result.notes.append(f"{entry.bdf}: {reason}; the function is gone; record kept")
        return
    refusal = FunctionPlan(function, direction, (), reason, NEWER_REMEDY)
    result.entries.append(replace(refusal, refusal_kind=RefusalKind.JOURNAL))


def settle(
    pending: Collection[JournalEntry],
    topology: Topology,
    *,
    selector: Selector,
    direction: Direction,
    targets: Collection[PciAddress],
    probe_picks: Callable[[PciFunction, Optional[str]], bool] = lambda _f, _d: True,
) -> Settlement:
    """Turn the pending journal records into plan input: a moot one is dropped, one that
    cannot apply refused, one going this run's way *finished*, any other *rolled back*."""
    result = Settlement()
    for entry in pending:
        if entry.newer_schema is not None and entry.bdf is not None:
            _refuse_newer(result, entry, topology, direction)
            continue
        if entry.corrupt or entry.bdf is None or entry.direction is None:
            where = f"set aside as {entry.quarantined_as}" if entry.quarantined_as else "ignored"
            which = f"{entry.bdf} is" if entry.bdf else "its function, if any, is"
            result.notes.append(
                f"a journal record{' for ' + entry.bdf if entry.bdf else ''} was unreadable "
                f"({entry.problem}); {where}; the interrupted run it described is not settled: "
                f"{which} planned from what sysfs shows now"
            )
            continue
        address = PciAddress.parse(entry.bdf)
        started = f"started {entry.started_at or 'at an unknown time'} by PID {entry.pid or '?'}"
        what = f"the interrupted {_VERB[entry.direction]} ({started})"
        function = topology.functions.get(address)
        present = f"{function.vendor:04x}:{function.device:04x}" if function else None
        if function is None or entry.vendor_device not in (None, present):
            gone = f"it was written for {entry.vendor_device}, but {present} is at that address now"
            gone = "the function is gone" if function is None else gone
            result.moot.append(entry.bdf)
            result.notes.append(f"{entry.bdf}: {what} is moot ({gone}); record dropped")
            continue
        driver, override = entry.original_driver, entry.original_override
        misfit = None  # why the record cannot be applied to the function now at its address
        if entry.original_driver_unknown:
            misfit = (
                "the driver it had before was not a usable name, so it was recorded as unknown "
                "and cannot be restored"
            )
        elif driver and not is_vfio_driver(driver) and driver not in topology.driver_modules:
            misfit = f"its recorded driver {driver!r} is not a registered PCI driver"
        elif not selector.matches(function) and address not in targets:  # a VF it brought
            misfit = f"the function is outside the selection ({selector.describe()})"
        if misfit is not None:
            reason = f"a journal record asks to settle {what}, but {misfit}"
            remedy = (
                "run with a selection that includes it if the record is right; otherwise "
                "move it out of the state directory (it is kept for you)"
            )
            kind = RefusalKind.JOURNAL
            result.entries.append(FunctionPlan(function, entry.direction, (), reason, remedy, kind))
            continue
        finish = entry.direction is direction
        verb, how = ("finishing", Settle.FINISH) if finish else ("rolling back", Settle.ROLL_BACK)
        interrupted = Interrupted(how, f"{verb} {what}", driver, override)
        if finish or address in targets:
            result.interrupted[address] = interrupted
            if address not in targets:
                result.extra_targets.append(function)
            continue
        steps = restore_steps(function, driver, override, probe_picks=probe_picks(function, driver))
        back = Direction.TO_HOST if entry.direction is Direction.TO_VFIO else Direction.TO_VFIO
        plan = FunctionPlan(function, back, steps, target_driver=driver, target_override=override)
        result.entries.append(replace(plan, interrupted=interrupted))
    return result

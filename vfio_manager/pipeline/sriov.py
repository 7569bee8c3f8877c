"""VF provisioning, planned: a PF the selection asks to carry N VFs stays on its native driver
and gets ``sriov_drivers_autoprobe`` 0, then ``sriov_numvfs`` N (its VFs then move to vfio
as targets); back to the host it gets the ``sriov_numvfs`` and autoprobe of its SR-IOV origin
in the journal, after its VFs. Pure, like :mod:`vfio_manager.pipeline.plan`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from vfio_manager.kernel.drivers import Direction, is_vfio_driver
from vfio_manager.kernel.model import PciFunction
from vfio_manager.pipeline.plan import Action, FunctionPlan, RefusalKind, Step

if TYPE_CHECKING:
    from vfio_manager.safety.journal import JournalEntry


def provision(pf: PciFunction, count: int, origin: Optional[JournalEntry]) -> FunctionPlan:
    """The PF's steps to ``count`` VFs (none when it has them); ``origin``: its SR-IOV origin,
    present when the VFs it has are ours to remove."""
    found = pf.sriov_numvfs or 0
    refusal: Optional[tuple[str, str]] = None
    if pf.driver is None or is_vfio_driver(pf.driver):
        refusal = (
            f"it is on {pf.driver or 'no driver'}; only its native driver creates VFs",
            f"return it to its native driver first (`vfio-manager unbind {pf.bdf}`, or load "
            "the driver's module)",
        )
    elif count > (pf.sriov_totalvfs or 0):
        refusal = (
            f"{count} VFs asked, it carries at most {pf.sriov_totalvfs} (sriov_totalvfs)",
            f"ask for at most {pf.sriov_totalvfs} VFs (--vfs)",
        )
    elif found not in (0, count) and origin is None:
        refusal = (
            f"it has {found} VFs vfio-manager did not create; they are left as found",
            f"ask for {found} VFs (--vfs) to bind them, or write 0 to its sriov_numvfs to let "
            f"vfio-manager create {count}",
        )
    if refusal is not None:
        reason, remedy = refusal
        return FunctionPlan(pf, Direction.TO_VFIO, (), reason, remedy, RefusalKind.KERNEL)
    steps: list[Step] = []
    if found != count:
        if pf.sriov_autoprobe is not False:
            steps.append(Step(Action.SRIOV_AUTOPROBE, value=0))
        if found:
            steps.append(Step(Action.SRIOV_NUMVFS, value=0))  # K17: 0 before another count
        steps.append(Step(Action.SRIOV_NUMVFS, value=count))
    return _stays(pf, Direction.TO_VFIO, steps)


def release(pf: PciFunction, origin: JournalEntry) -> FunctionPlan:
    """The PF's steps back to its SR-IOV origin: VFs we created removed, autoprobe as found
    (before VFs it had are created again, so they are probed as they were)."""
    found, numvfs = pf.sriov_numvfs or 0, origin.original_numvfs or 0
    autoprobe = origin.original_autoprobe if origin.original_autoprobe is not None else 1
    steps: list[Step] = []
    if found not in (0, numvfs):
        steps.append(Step(Action.SRIOV_NUMVFS, value=0))
    if pf.sriov_autoprobe is not bool(autoprobe):
        steps.append(Step(Action.SRIOV_AUTOPROBE, value=autoprobe))
    if numvfs and found != numvfs:
        steps.append(Step(Action.SRIOV_NUMVFS, value=numvfs))
    return _stays(pf, Direction.TO_HOST, steps)


def _stays(pf: PciFunction, direction: Direction, steps: list[Step]) -> FunctionPlan:
    """The PF's entry: its SR-IOV steps, its driver and override as they are."""
    return FunctionPlan(
        pf, direction, tuple(steps), target_driver=pf.driver, target_override=pf.driver_override
    )

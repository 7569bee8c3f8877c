"""The PF's SR-IOV entries, planned without I/O: to a count of VFs and back to its origin."""

from __future__ import annotations

from typing import Optional

import pytest

from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.model import PciFunction
from vfio_manager.pipeline.plan import Action, RefusalKind, Step
from vfio_manager.pipeline.sriov import provision, release
from vfio_manager.safety.journal import SRIOV, JournalEntry


def pf(numvfs: int = 0, autoprobe: bool = True, driver: Optional[str] = "igb") -> PciFunction:
    return PciFunction(
        PciAddress.parse("0000:04:00.0"),
        0x8086,
        0x10C9,
        0x020000,
        driver=driver,
        sriov_totalvfs=7,
        sriov_numvfs=numvfs,
        sriov_autoprobe=autoprobe,
    )


def origin(numvfs: int = 0, autoprobe: int = 1) -> JournalEntry:
    return JournalEntry("0000:04:00.0", SRIOV, original_numvfs=numvfs, original_autoprobe=autoprobe)


def autoprobe(value: int) -> Step:
    return Step(Action.SRIOV_AUTOPROBE, value=value)


def numvfs(value: int) -> Step:
    return Step(Action.SRIOV_NUMVFS, value=value)


@pytest.mark.parametrize(
    ("found", "recorded", "steps"),
    [
        (pf(), None, (autoprobe(0), numvfs(2))),
        (pf(autoprobe=False), origin(), (numvfs(2),)),  # a run killed between the two
        (pf(2, False), origin(), ()),
        (pf(3, False), origin(), (numvfs(0), numvfs(2))),
    ],
)
def test_provision_writes_autoprobe_first_and_zero_between_counts(
    found: PciFunction, recorded: Optional[JournalEntry], steps: tuple[Step, ...]
) -> None:
    entry = provision(found, 2, recorded)
    assert entry.refusal is None
    assert entry.steps == steps
    assert entry.target_driver == "igb"


@pytest.mark.parametrize(
    ("found", "count", "says"),
    [
        (pf(driver=None), 2, "on no driver"),
        (pf(driver="vfio-pci"), 2, "on vfio-pci"),
        (pf(), 8, "carries at most 7"),
        (pf(3), 2, "did not create"),
    ],
)
def test_provision_refusals(found: PciFunction, count: int, says: str) -> None:
    entry = provision(found, count, None)
    assert entry.refusal is not None
    assert says in entry.refusal
    assert entry.refusal_kind is RefusalKind.KERNEL
    assert entry.steps == ()


@pytest.mark.parametrize(
    ("found", "recorded", "steps"),
    [
        (pf(2, False), origin(), (numvfs(0), autoprobe(1))),
        (pf(0, True), origin(), ()),
        (pf(3, False), origin(2, 1), (numvfs(0), autoprobe(1), numvfs(2))),  # probed as found
        (pf(2, False), origin(2, 0), ()),
    ],
)
def test_release_goes_back_to_the_origin(
    found: PciFunction, recorded: JournalEntry, steps: tuple[Step, ...]
) -> None:
    assert release(found, recorded).steps == steps

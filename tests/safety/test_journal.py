"""Journal records on real files under tmp_path (atomic replace and fsync need a real fs), and
through the CLI on the fake kernel: odd values sysfs shows are recorded as they are and read
back (an override is a string written back, not a path; a driver name that is no usable path
component is recorded as unknown), never reported as "this is a bug".
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import stat
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import VFIO, invoke, pending, plant_record, state_dir
from tests.support import state as driver_and_override
from vfio_manager.errors import UsageError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import Direction
from vfio_manager.kernel.model import PciFunction
from vfio_manager.safety.journal import ORIGIN, TRANSITION, Journal, JournalEntry, JournalError
from vfio_manager.safety.statedir import UnsafeStateDirError

BDF = "0000:03:00.0"
NPU = 0x1220
NOW = "2025-01-01T00:00:00+00:00"


def npu(
    bdf: str = BDF,
    *,
    driver: Optional[str] = "rebellions",
    override: Optional[str] = None,
    device: int = NPU,
) -> PciFunction:
    return PciFunction(
        address=PciAddress.parse(bdf),
        vendor=0x1EFF,
        device=device,
        pci_class=0x120000,
        driver=driver,
        driver_override=override,
    )


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "run" / "vfio-manager"


@pytest.fixture
def journal(state: Path) -> Journal:
    return Journal(str(state), now=lambda: NOW)


def files(state: Path) -> list[str]:
    return sorted(p.name for p in state.iterdir())


def test_bind_records_transition_and_origin(journal: Journal, state: Path) -> None:
    entry = journal.record_start(npu(), Direction.TO_VFIO)
    assert entry.original_driver == "rebellions"
    assert entry.origin_created
    assert files(state) == [f"journal-{BDF}.json", f"origin-{BDF}.json"]
    assert stat.S_IMODE(os.stat(state / f"journal-{BDF}.json").st_mode) == 0o600
    data = json.loads((state / f"journal-{BDF}.json").read_text())
    assert data["bdf"] == BDF
    assert data["vendor_device"] == "1eff:1220"
    assert data["original_driver"] == "rebellions"
    assert data["original_override"] is None
    assert data["direction"] == "vfio"
    assert data["started_at"] == NOW
    assert data["pid"] == os.getpid()

    (pending,) = journal.pending()
    assert pending.direction is Direction.TO_VFIO
    assert not pending.corrupt

    journal.drop_transition(BDF)
    assert journal.pending() == []
    origin = journal.original(BDF)
    assert origin is not None
    assert origin.record == ORIGIN
    assert (origin.original_driver, origin.original_override) == ("rebellions", None)
    assert files(state) == [f"origin-{BDF}.json"]


def test_return_to_host_keeps_the_origin_until_it_is_forgotten(
    journal: Journal, state: Path
) -> None:
    journal.record_start(npu(), Direction.TO_VFIO)
    journal.drop_transition(BDF)
    on_vfio = npu(driver="vfio-pci", override="vfio-pci")
    entry = journal.record_start(on_vfio, Direction.TO_HOST)
    assert not entry.origin_created
    origin = journal.original(BDF)
    assert origin is not None
    assert origin.original_driver == "rebellions", "the origin survives the way back"
    journal.drop_transition(BDF)
    origin = journal.original(BDF)
    assert origin is not None, "as found, and as it is again: the next run leaves it so"
    assert origin.original_driver == "rebellions"
    assert files(state) == [f"origin-{BDF}.json"]
    journal.forget_origin(BDF)
    assert journal.original(BDF) is None
    assert files(state) == []


def test_second_bind_keeps_the_first_origin(journal: Journal) -> None:
    """A function already in vfio mode (driver or override) does not overwrite its origin."""
    journal.record_start(npu(driver="nvme"), Direction.TO_VFIO)
    journal.drop_transition(BDF)
    for driver, override in (("vfio-pci", "vfio-pci"), (None, "vfio-pci"), ("vfio-pci", None)):
        journal.record_start(npu(driver=driver, override=override), Direction.TO_VFIO)
        journal.drop_transition(BDF)
        origin = journal.original(BDF)
        assert origin is not None
        assert origin.original_driver == "nvme"


def test_abort_of_a_bind_keeps_the_origin_it_is_back_in(journal: Journal, state: Path) -> None:
    journal.record_start(npu(driver=None, override="pci-stub"), Direction.TO_VFIO)
    journal.drop_transition(BDF)
    assert files(state) == [f"origin-{BDF}.json"]
    origin = journal.original(BDF)
    assert origin is not None
    assert (origin.original_driver, origin.original_override) == (None, "pci-stub")


def test_abort_of_a_return_keeps_the_origin(journal: Journal) -> None:
    journal.record_start(npu(), Direction.TO_VFIO)
    journal.drop_transition(BDF)
    journal.record_start(npu(driver="vfio-pci", override="vfio-pci"), Direction.TO_HOST)
    journal.drop_transition(BDF)
    origin = journal.original(BDF)
    assert origin is not None
    assert origin.original_driver == "rebellions"
    assert journal.pending() == []


def test_unrecovered_transition_keeps_the_first_originals(journal: Journal) -> None:
    """A crash after the unbind: the function is driverless now, but the record knows better."""
    journal.record_start(npu(), Direction.TO_VFIO)
    entry = journal.record_start(npu(driver=None, override="vfio-pci"), Direction.TO_VFIO)
    assert entry.original_driver == "rebellions"
    origin = journal.original(BDF)
    assert origin is not None
    assert origin.original_driver == "rebellions"


def test_original_ignores_a_record_for_another_device(journal: Journal, state: Path) -> None:
    journal.record_start(npu(), Direction.TO_VFIO)
    journal.drop_transition(BDF)
    assert journal.original(BDF, vendor_device="1eff:1220") is not None
    assert journal.original(BDF, vendor_device="1EFF:1221") is None
    assert files(state) == [], "a stale origin is removed, not trusted later"


def test_records_are_per_function(journal: Journal) -> None:
    other = "0000:04:00.0"
    journal.record_start(npu(), Direction.TO_VFIO)
    journal.record_start(npu(other, driver=None), Direction.TO_VFIO)
    journal.drop_transition(BDF)
    assert [e.bdf for e in journal.pending()] == [other]
    origin = journal.original(other)
    assert origin is not None
    assert origin.original_driver is None


def test_bad_bdf_never_becomes_a_path(journal: Journal, state: Path) -> None:
    for bad in ("../../etc/passwd", "0000:03:00.8", "", "x"):
        with pytest.raises(UsageError):
            journal.drop_transition(bad)
    assert not state.exists() or files(state) == []


def test_short_bdf_is_filed_canonically(journal: Journal, state: Path) -> None:
    journal.record_start(npu("03:00.0"), Direction.TO_VFIO)
    assert f"journal-{BDF}.json" in files(state)
    entry = journal.transition("03:00.0")
    assert entry is not None
    assert entry.bdf == BDF


# -- corrupt records ----------------------------------------------------------------------


GARBAGE = [
    b"",
    b"{",
    b"\xff\xfe\x00garbage",
    b"[]",
    b"null",
    b'{"version": 1}',
    # an unknown version below this release's (a later release's is kept: test_upgrade.py)
    b'{"version": 0, "record": "transition", "bdf": "0000:03:00.0", "direction": "vfio"}',
    b'{"version": "2", "record": "transition", "bdf": "0000:03:00.0", "direction": "vfio"}',
    b'{"version": 1, "record": "transition", "bdf": "0000:03:00.1", "direction": "vfio"}',
    b'{"version": 1, "record": "transition", "bdf": "0000:03:00.0", "direction": "sideways"}',
    b'{"version": 1, "record": "transition", "bdf": "0000:03:00.0", "direction": "vfio",'
    b' "steps_done": "unbind"}',
    b'{"version": 1, "record": "transition", "bdf": "0000:03:00.0", "direction": "vfio",'
    b' "original_driver": "../../bin"}',
    b'{"version": 1, "record": "transition", "bdf": "0000:03:00.0", "direction": "vfio",'
    b' "pid": true}',
    b"[" * 100_000,
]


@pytest.mark.parametrize("content", GARBAGE, ids=range(len(GARBAGE)))
def test_corrupt_transition_is_reported_and_quarantined(
    journal: Journal, state: Path, content: bytes
) -> None:
    state.mkdir(parents=True, mode=0o700)
    (state / f"journal-{BDF}.json").write_bytes(content)
    (entry,) = journal.pending()
    assert entry.corrupt
    assert entry.bdf == BDF
    assert entry.problem
    assert entry.quarantined_as == str(state / f"journal-{BDF}.json.corrupt")
    assert files(state) == [f"journal-{BDF}.json.corrupt"]
    assert (state / f"journal-{BDF}.json.corrupt").read_bytes() == content
    assert journal.pending() == []
    # and the function can be journalled again
    journal.record_start(npu(), Direction.TO_VFIO)
    assert [e.bdf for e in journal.pending()] == [BDF]


def test_repeated_corruption_keeps_every_copy(journal: Journal, state: Path) -> None:
    state.mkdir(parents=True, mode=0o700)
    for n in range(3):
        (state / f"journal-{BDF}.json").write_text(f"garbage {n}")
        (entry,) = journal.pending()
        assert entry.corrupt
    assert files(state) == [
        f"journal-{BDF}.json.1.corrupt",
        f"journal-{BDF}.json.2.corrupt",
        f"journal-{BDF}.json.corrupt",
    ]


def test_corrupt_origin_reads_as_unknown(journal: Journal, state: Path) -> None:
    state.mkdir(parents=True, mode=0o700)
    (state / f"origin-{BDF}.json").write_text("{not json")
    assert journal.original(BDF) is None
    assert files(state) == [f"origin-{BDF}.json.corrupt"]


def test_symlinked_record_is_quarantined_not_followed(journal: Journal, state: Path) -> None:
    state.mkdir(parents=True, mode=0o700)
    target = state.parent / "elsewhere.json"
    good = JournalEntry(bdf=BDF, record=TRANSITION, direction=Direction.TO_VFIO)
    target.write_text(json.dumps(good.to_json()))
    (state / f"journal-{BDF}.json").symlink_to(target)
    (entry,) = journal.pending()
    assert entry.corrupt
    assert entry.problem is not None
    assert "symlink" in entry.problem
    assert target.exists()
    assert os.path.islink(state / f"journal-{BDF}.json.corrupt")


def test_writing_through_a_symlinked_record_replaces_the_link(
    journal: Journal, state: Path
) -> None:
    """os.replace swaps the name: a planted link is replaced, its target never written."""
    state.mkdir(parents=True, mode=0o700)
    victim = state.parent / "victim"
    victim.write_text("precious")
    (state / f"journal-{BDF}.json").symlink_to(victim)
    journal.record_start(npu(), Direction.TO_VFIO)
    assert victim.read_text() == "precious"
    assert not os.path.islink(state / f"journal-{BDF}.json")


def test_badly_named_record_is_quarantined(journal: Journal, state: Path) -> None:
    state.mkdir(parents=True, mode=0o700)
    (state / "journal-03:00.0.json").write_text("{}")
    (state / "journal-zz.json").write_text("{}")
    entries = journal.pending()
    assert [e.corrupt for e in entries] == [True, True]
    assert all(e.bdf is None for e in entries)
    assert sorted(files(state)) == ["journal-03:00.0.json.corrupt", "journal-zz.json.corrupt"]


def test_pending_removes_stale_temporary_files(journal: Journal, state: Path) -> None:
    state.mkdir(parents=True, mode=0o700)
    (state / f".tmp-journal-{BDF}.json.1.abcd").write_text('{"half')
    (state / "lock").write_text("")
    assert journal.pending() == []
    assert files(state) == ["lock"]


def test_unsafe_state_dir_is_refused(state: Path) -> None:
    state.mkdir(parents=True)
    state.chmod(0o777)
    with pytest.raises(UnsafeStateDirError):
        Journal(str(state)).record_start(npu(), Direction.TO_VFIO)


def test_write_failure_is_a_journal_error(
    journal: Journal, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state.mkdir(parents=True, mode=0o700)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(JournalError) as caught:
        journal.record_start(npu(), Direction.TO_VFIO)
    assert caught.value.remedy is not None
    assert caught.value.bdf == BDF
    assert caught.value.errno == errno.ENOSPC
    assert files(state) == [], "no record, and the temporary file was cleaned up"


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=512) | st.text(max_size=512).map(str.encode))
def test_fuzzed_records_never_raise(tmp_path: Path, content: bytes) -> None:
    state = tmp_path / "fuzz"
    state.mkdir(mode=0o700, exist_ok=True)
    for name in os.listdir(state):
        os.unlink(state / name)
    (state / f"journal-{BDF}.json").write_bytes(content)
    (state / f"origin-{BDF}.json").write_bytes(content)
    journal = Journal(str(state))
    (entry,) = journal.pending()
    assert entry.bdf == BDF
    assert entry.corrupt != (state / f"journal-{BDF}.json").exists()
    journal.original(BDF)


# -- every record the journal writes reads back --------------------------------------------

PAGE = 4096
ODD_VALUES = [
    "",
    ".",
    "..",
    "/",
    "a/b",
    "../../bin",
    "vfio pci",
    " ",
    "pci-stub\t",
    "ドライバ",
    "\u00e9\u0301",
    "x" * 255,
    "x" * 256,
    "y" * (PAGE - 1),
    "\U0001f600" * (PAGE - 1),
    "a\nb",
    "nul\0",
]
odd = st.none() | st.sampled_from(ODD_VALUES) | st.text(max_size=64) | st.text(max_size=PAGE)


def _kernel_can_show(override: Optional[str]) -> bool:
    """driver_override as sysfs can show it: one line, no NUL, under a page."""
    return override is None or (
        "\n" not in override and "\0" not in override and len(override) < PAGE
    )


def _usable_driver_name(driver: str) -> bool:
    return (
        driver not in {"", ".", ".."}
        and not any(c in driver for c in "/\0\n")
        and len(driver.encode()) <= 255
    )


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(driver=odd, override=odd, direction=st.sampled_from(list(Direction)))
def test_every_record_the_journal_writes_reads_back(
    tmp_path: Path, driver: Optional[str], override: Optional[str], direction: Direction
) -> None:
    state = tmp_path / "odd"
    state.mkdir(mode=0o700, exist_ok=True)
    for name in os.listdir(state):
        os.unlink(state / name)
    journal = Journal(str(state), now=lambda: NOW)
    function = npu(driver=driver, override=override)
    if not _kernel_can_show(override):  # cannot be written back as it was: refused
        with pytest.raises(JournalError) as refused:
            journal.record_start(function, direction)
        assert refused.value.remedy is not None
        assert files(state) == [], "refused before anything was written"
        return
    entry = journal.record_start(function, direction)
    assert files(state)
    assert not any(name.endswith(".corrupt") for name in files(state))
    assert journal.transition(BDF) == entry
    (found,) = journal.pending()
    assert not found.corrupt, found.problem
    assert found.original_override == (override or None)
    if driver is None or _usable_driver_name(driver):
        assert (found.original_driver, found.original_driver_unknown) == (driver, False)
    else:
        assert (found.original_driver, found.original_driver_unknown) == (None, True)
    if entry.origin_created:
        origin = journal.original(BDF)
        assert origin is not None
        assert not origin.corrupt
        assert (origin.original_driver, origin.original_override) == (
            found.original_driver,
            found.original_override,
        )
    assert not any(name.endswith(".corrupt") for name in files(state))


def test_a_driver_link_with_an_unusable_name_is_recorded_as_unknown(
    journal: Journal, state: Path
) -> None:
    entry = journal.record_start(npu(driver=""), Direction.TO_VFIO)
    assert (entry.original_driver, entry.original_driver_unknown) == (None, True)
    data = json.loads((state / f"origin-{BDF}.json").read_text())
    assert data["original_driver"] is None
    assert data["original_driver_unknown"] is True
    origin = journal.original(BDF)
    assert origin is not None
    assert origin.original_driver_unknown


def test_an_override_with_a_slash_is_kept_as_the_string_it_was(journal: Journal) -> None:
    journal.record_start(npu(override="odd/override"), Direction.TO_VFIO)
    (found,) = journal.pending()
    assert found.original_override == "odd/override"
    origin = journal.original(BDF)
    assert origin is not None
    assert origin.original_override == "odd/override"


@pytest.mark.parametrize(
    "fields",
    [
        {"original_driver_unknown": "yes"},
        {"original_driver_unknown": True, "original_driver": "rebellions"},
        {"original_override": "a\nb"},
        {"original_override": "x" * PAGE},
        {"original_override": ""},
    ],
)
def test_what_the_journal_would_refuse_to_write_it_refuses_to_read(
    journal: Journal, state: Path, fields: dict[str, object]
) -> None:
    state.mkdir(parents=True, mode=0o700)
    record = JournalEntry(bdf=BDF, record=TRANSITION, direction=Direction.TO_VFIO).to_json()
    record.update(fields)
    (state / f"journal-{BDF}.json").write_text(json.dumps(record))
    (entry,) = journal.pending()
    assert entry.corrupt


# -- odd values sysfs shows, through the CLI: recorded as they are, read back ------------------
def corrupt_records(kernel: FakeKernel) -> list[str]:
    directory = state_dir(kernel)
    return [n for n in os.listdir(directory) if n.endswith(".corrupt")]


def test_an_override_with_a_slash_is_recorded_and_the_bind_succeeds(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    with open(f"{kernel.sys_root}/bus/pci/devices/{npu}/driver_override", "w") as handle:
        handle.write("odd/override\n")
    assert kernel.override_of(npu) == "odd/override"
    result = invoke(kernel, "bind-all")
    assert result.exit_code == 0, result.stdout
    assert "bug" not in result.stdout + result.stderr
    assert driver_and_override(kernel, npu) == VFIO
    assert corrupt_records(kernel) == []
    origin = posixpath.join(state_dir(kernel), f"origin-{npu}.json")
    with open(origin, encoding="utf-8") as handle:
        recorded = json.load(handle)
    assert (recorded["original_driver"], recorded["original_override"]) == (
        "rebellions",
        "odd/override",
    )


def test_a_driver_link_without_a_usable_name_is_recorded_as_unknown(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1)
    link = f"{kernel.sys_root}/bus/pci/devices/{npu}/driver"
    os.unlink(link)
    os.symlink("/", link)  # resolves to the empty name
    result = invoke(kernel, "bind-all")
    assert "bug" not in result.stdout + result.stderr
    assert corrupt_records(kernel) == []
    assert "recorded as unknown" in result.stderr
    assert result.exit_code == 1  # it cannot be unbound from a driver it cannot name
    assert "'' is not a valid driver name" in result.stdout
    assert kernel.override_of(npu) is None, "put back where it started"
    assert pending(kernel) == []


def test_a_record_whose_driver_was_unknown_is_refused_not_rolled_back(kernel: FakeKernel) -> None:
    (npu,) = npu_node(kernel, count=1, driver="vfio-pci")
    path = plant_record(
        kernel, npu, vendor_device="1eff:1220", original_driver=None, original_driver_unknown=True
    )
    kernel.clear_writes()
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 1
    assert kernel.writes == []
    assert "recorded as unknown" in result.stdout
    assert os.path.exists(path)


def test_an_origin_whose_driver_was_unknown_gives_way_to_modules_alias(
    kernel: FakeKernel,
) -> None:
    (npu,) = npu_node(kernel, count=1, driver="vfio-pci")
    directory = state_dir(kernel)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(posixpath.join(directory, f"origin-{npu}.json"), "w", encoding="utf-8") as handle:
        json.dump(
            {
                "version": 1,
                "record": "origin",
                "bdf": npu,
                "direction": "vfio",
                "vendor_device": "1eff:1220",
                "original_driver": None,
                "original_driver_unknown": True,
                "original_override": None,
                "steps_done": [],
                "pid": 1,
                "origin_created": False,
            },
            handle,
        )
    result = invoke(kernel, "unbind-all")
    assert result.exit_code == 0, result.stdout
    assert kernel.driver_of(npu) == "rebellions", "not left unbound as if it had had no driver"
    assert "modules.alias" in result.stdout


def _pf(numvfs: int, autoprobe: bool) -> PciFunction:
    return PciFunction(
        address=PciAddress.parse(BDF),
        vendor=0x1EFF,
        device=0x1250,
        pci_class=0x120000,
        driver="rebellions",
        sriov_totalvfs=4,
        sriov_numvfs=numvfs,
        sriov_autoprobe=autoprobe,
    )


def test_a_pfs_sriov_origin_keeps_what_it_was_first_found_with(
    journal: Journal, state: Path
) -> None:
    first = journal.record_sriov(_pf(0, True))
    assert (first.original_numvfs, first.original_autoprobe) == (0, 1)
    again = journal.record_sriov(_pf(2, False))  # a later run, our VFs there: kept as it was
    assert again == first
    doc = json.loads((state / f"sriov-{BDF}.json").read_text())
    assert doc["record"] == "sriov"
    assert doc["direction"] is None
    assert (doc["original_numvfs"], doc["original_autoprobe"]) == (0, 1)
    assert journal.sriov(BDF, vendor_device="1eff:1251") is None, "another device's"
    assert journal.pending() == [], "no transition record"
    journal.drop_sriov(BDF)
    assert journal.sriov(BDF) is None


def test_transition_and_origin_records_have_no_sriov_fields(journal: Journal, state: Path) -> None:
    journal.record_start(npu(), Direction.TO_VFIO)
    for name in (f"journal-{BDF}.json", f"origin-{BDF}.json"):
        doc = json.loads((state / name).read_text())
        assert "original_numvfs" not in doc
        assert "original_autoprobe" not in doc


def test_a_corrupt_sriov_origin_is_set_aside(journal: Journal, state: Path) -> None:
    journal.record_sriov(_pf(0, True))
    (state / f"sriov-{BDF}.json").write_text("{")
    assert journal.sriov(BDF) is None
    (bad,) = journal.take_set_aside()
    assert bad.record == "sriov"
    assert os.path.exists(state / f"sriov-{BDF}.json.corrupt")

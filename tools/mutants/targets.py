"""The modules mutated and, for each, the tests that exercise it.

Each list is the fast suite's files that can notice a change to the module: its own test
module first, then those that drive it through the pipeline or the CLI on the fake kernel,
fast ones first so a killed mutant stops early (``pytest -x``). The slowest
files of the fast suite (tests/pipeline/test_bad_input.py ~125 s, test_fault_matrix.py ~60 s,
test_properties.py ~30 s) are left out: with them one mutant would cost minutes. ``sample`` is
how many mutants of the module the default run draws (seeded), sized so the whole run stays
within ~40 minutes on two cores shared with other work (a surviving engine mutant costs ~50 s).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    path: str
    tests: tuple[str, ...]
    sample: int


_PIPELINE = (
    "tests/pipeline/test_engine.py",
    "tests/test_layers.py",
    "tests/pipeline/test_plan.py",
    "tests/pipeline/test_transition.py",
    "tests/pipeline/test_refusals.py",
    "tests/pipeline/test_settle.py",
    "tests/pipeline/test_journal_failures.py",
    "tests/safety/test_lock.py",
    "tests/cli/test_transitions.py",
    "tests/pipeline/test_as_found.py",
    "tests/pipeline/test_interrupt.py",
)

TARGETS: dict[str, Target] = {
    "engine": Target(
        "vfio_manager/pipeline/engine.py",
        (*_PIPELINE, "tests/pipeline/test_recorded_replay.py"),
        sample=14,
    ),
    "plan": Target(
        "vfio_manager/pipeline/plan.py",
        (*_PIPELINE, "tests/pipeline/test_crash.py"),
        sample=16,
    ),
    "transition": Target(
        "vfio_manager/pipeline/transition.py",
        (*_PIPELINE, "tests/daemon/test_service.py"),  # intents of admin runs beside a daemon
        sample=8,
    ),
    "journal": Target(
        "vfio_manager/safety/journal.py",
        (
            "tests/safety/test_journal.py",
            "tests/pipeline/test_engine.py",
            "tests/pipeline/test_settle.py",
            "tests/safety/test_statedir.py",
            "tests/pipeline/test_journal_failures.py",
            "tests/safety/test_lock.py",
            "tests/pipeline/test_as_found.py",
            "tests/cli/test_transitions.py",
        ),
        sample=10,
    ),
    "holders": Target(
        "vfio_manager/safety/holders.py",
        (
            "tests/safety/test_holders.py",
            "tests/safety/test_hostcritical.py",
            "tests/test_layers.py",
            "tests/pipeline/test_refusals.py",
            "tests/pipeline/test_engine.py",
        ),
        sample=12,
    ),
    "lock": Target(
        "vfio_manager/safety/lock.py",
        (
            "tests/safety/test_lock.py",
            "tests/safety/test_writer.py",
            "tests/safety/test_statedir.py",
            "tests/cli/test_json_errors.py",
            "tests/pipeline/test_engine.py",
            "tests/safety/test_stuck_write_process.py",
        ),
        sample=12,
    ),
    "writer": Target(
        "vfio_manager/safety/writer.py",
        (
            "tests/safety/test_writer.py",
            "tests/pipeline/test_engine.py",
            "tests/safety/test_stuck_write_process.py",
        ),
        sample=12,
    ),
    "statedir": Target(
        "vfio_manager/safety/statedir.py",
        (
            "tests/safety/test_statedir.py",
            "tests/safety/test_lock.py",
            "tests/safety/test_intents.py",
            "tests/safety/test_journal.py",
            "tests/cli/test_option_values.py",
        ),
        sample=8,
    ),
    "sysfs": Target(
        "vfio_manager/kernel/sysfs.py",
        (
            "tests/kernel/test_sysfs.py",
            "tests/pipeline/test_engine.py",
            "tests/safety/test_writer.py",
            "tests/safety/test_holders.py",
            "tests/cli/test_status.py",
            "tests/pipeline/test_refusals.py",
        ),
        sample=8,
    ),
    "verbs": Target(
        "vfio_manager/kernel/verbs.py",
        ("tests/kernel/test_sysfs.py", "tests/pipeline/test_engine.py", "tests/cli/test_sriov.py"),
        sample=4,
    ),
    "sriov": Target(
        "vfio_manager/pipeline/sriov.py",
        (
            "tests/pipeline/test_sriov_plan.py",
            "tests/cli/test_sriov.py",
            "tests/daemon/test_sriov.py",
        ),
        sample=4,
    ),
    "modalias": Target(
        "vfio_manager/host/modalias.py",
        ("tests/host/test_modalias.py", "tests/cli/test_check.py"),
        sample=4,
    ),
}

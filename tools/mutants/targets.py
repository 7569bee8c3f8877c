"""The modules mutated and, for each, the tests that exercise it.

Each list is the fast suite's files that drive the module through the pipeline or the CLI on
the fake kernel, fastest first so a killed mutant stops early (``pytest -x``). The slowest
files of the fast suite (tests/safety/test_bad_input.py ~125 s, test_fault_matrix.py ~60 s,
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


SURVIVORS = "tests/safety/test_mutant_survivors.py"  # written for this tool's survivors

_PIPELINE = (
    SURVIVORS,
    "tests/unit/test_layers.py",
    "tests/unit/test_engine.py",
    "tests/unit/test_plan.py",
    "tests/unit/test_transition_scope.py",
    "tests/safety/test_in_use.py",
    "tests/safety/test_pipeline_regressions.py",
    "tests/safety/test_journal_failures.py",
    "tests/cli/test_transitions.py",
    "tests/safety/test_as_found.py",
)

TARGETS: dict[str, Target] = {
    "engine": Target(
        "vfio_manager/pipeline/engine.py",
        (*_PIPELINE, "tests/cli/test_recorded_replay.py"),
        sample=14,
    ),
    "plan": Target(
        "vfio_manager/pipeline/plan.py", (*_PIPELINE, "tests/safety/test_crash.py"), sample=16
    ),
    "transition": Target(
        "vfio_manager/pipeline/transition.py",
        (*_PIPELINE, "tests/safety/test_lock_and_concurrency.py"),
        sample=8,
    ),
    "journal": Target(
        "vfio_manager/safety/journal.py",
        (
            SURVIVORS,
            "tests/unit/test_journal.py",
            "tests/safety/test_pipeline_regressions.py",
            "tests/safety/test_state_files.py",
            "tests/safety/test_journal_failures.py",
            "tests/safety/test_recorded_values.py",
            "tests/safety/test_as_found.py",
            "tests/cli/test_transitions.py",
        ),
        sample=10,
    ),
    "holders": Target(
        "vfio_manager/safety/holders.py",
        (
            SURVIVORS,
            "tests/unit/test_inuse.py",
            "tests/unit/test_guard.py",
            "tests/unit/test_layers.py",
            "tests/safety/test_in_use.py",
        ),
        sample=12,
    ),
    "lock": Target(
        "vfio_manager/safety/lock.py",
        (
            SURVIVORS,
            "tests/unit/test_lock.py",
            "tests/unit/test_statedir.py",
            "tests/cli/test_json_errors.py",
            "tests/safety/test_state_files.py",
            "tests/safety/test_lock_and_concurrency.py",
            "tests/safety/test_stuck_write_process.py",
        ),
        sample=12,
    ),
    "writer": Target(
        "vfio_manager/safety/writer.py",
        (
            SURVIVORS,
            "tests/unit/test_deadline.py",
            "tests/unit/test_engine.py",
            "tests/safety/test_stuck_write_process.py",
        ),
        sample=12,
    ),
}

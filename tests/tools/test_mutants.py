"""tools/mutants: each mutant is one reproducible change that still compiles.

The score in docs/testing.md is only meaningful if a mutant id names the same change on every
run and every mutant really differs from the module; these tests hold the operators to that
on a small module and on one of the real targets.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tools.mutants.__main__ import choose, quotas
from tools.mutants.operators import mutate, sites
from tools.mutants.targets import TARGETS

REPO = Path(__file__).parents[2]

SAMPLE = '''
"""Docstring: never mutated."""
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    import os

def guard(held: bool, count: int, log) -> bool:
    log.info("checking", held=held)
    if held and count > 0:
        record(count)
        return False
    return not held
'''


def test_each_operator_makes_a_different_compiling_module() -> None:
    found = sites(SAMPLE)
    operators = {site.operator for site in found}
    assert operators >= {
        "compare", "not-remove", "not-add", "bool-const", "and-or", "int-plus-one",
        "return-none", "delete-statement", "if-body-pass",
    }  # fmt: skip
    original = ast.dump(ast.parse(SAMPLE))
    for site in found:
        mutated = mutate(SAMPLE, site)
        compile(mutated, "<mutant>", "exec")
        assert ast.dump(ast.parse(mutated)) != original, site


def test_logging_docstrings_and_type_checking_blocks_are_left_alone() -> None:
    described = " ".join(site.description for site in sites(SAMPLE))
    assert "log.info" not in described
    assert "TYPE_CHECKING" not in described
    assert "Docstring" not in described


def test_a_mutant_id_names_the_same_change_on_every_run() -> None:
    source = (REPO / TARGETS["lock"].path).read_text()
    first, second = sites(source), sites(source)
    assert first == second
    assert mutate(source, first[7]) == mutate(source, second[7])
    assert choose("lock", first, 5, seed=9) == choose("lock", second, 5, seed=9)
    assert choose("lock", first, 5, seed=9) != choose("lock", first, 5, seed=10)


def test_every_module_of_the_package_is_a_target_with_tests_that_exist() -> None:
    mutated = {t.path for t in TARGETS.values()}
    for path in sorted((REPO / "vfio_manager").rglob("*.py")):
        relative = str(path.relative_to(REPO))
        assert relative in mutated or not sites(path.read_text()), relative
    for name, target in TARGETS.items():
        missing = [test for test in target.tests if not (REPO / test).is_file()]
        assert missing == [], name


def test_the_sample_spans_every_module_and_follows_their_sizes() -> None:
    counts = {"big": 400, "mid": 40, "small": 2}
    share = quotas(counts, 30, seed=9)
    assert sum(share.values()) == 30
    assert min(share.values()) >= 1
    assert share["big"] > share["mid"]
    assert quotas(counts, 30, seed=9) == share
    few = quotas(counts, 2, seed=9)  # fewer mutants than modules: drawn among all of them
    assert sum(few.values()) == 2

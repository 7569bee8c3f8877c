"""tools/mutants: each mutant is one reproducible change that still compiles.

The score in docs/testing.md is only meaningful if a mutant id names the same change on every
run and every mutant really differs from the module; these tests hold the operators to that
on a small module and on one of the real targets.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tools.mutants.__main__ import choose
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

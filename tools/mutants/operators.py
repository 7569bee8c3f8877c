"""Mutation operators: each finds the places in a module's AST where it can make one small change.

A mutant is (operator, index of the site in a fixed walk of the tree); applying it to a fresh
parse of the same source gives the same change every time, so a mutant id such as
``engine:57`` names one reproducible change. Code that only logs, docstrings, annotations and
``if TYPE_CHECKING`` blocks are never mutated: a change there is equivalent or log-only by
construction.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable, Optional

_COMPARE_FLIPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}

_LOG_NAMES = {"log", "logger", "_log"}
_LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "msg"}


@dataclass(frozen=True)
class Site:
    """One place an operator can change: which node (by walk order) and how it reads."""

    operator: str
    node_index: int
    lineno: int
    description: str


def _is_log_call(node: ast.AST) -> bool:
    call = node.value if isinstance(node, ast.Expr) else node
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
        return False
    target = call.func.value
    return (
        isinstance(target, ast.Name) and target.id in _LOG_NAMES and call.func.attr in _LOG_METHODS
    )


def _is_docstring(node: ast.AST, parent: Optional[ast.AST]) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        and isinstance(parent, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    )


def _is_type_checking_if(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    )


def mutable_nodes(tree: ast.Module) -> list[ast.AST]:
    """Every node that may be mutated, in a fixed order (skips annotations, logs, docstrings)."""
    found: list[ast.AST] = []

    def visit(node: ast.AST, parent: Optional[ast.AST]) -> None:
        if _is_type_checking_if(node) or _is_docstring(node, parent) or _is_log_call(node):
            return
        found.append(node)
        for name, value in ast.iter_fields(node):
            if name in {"annotation", "returns", "decorator_list", "type_comment"}:
                continue
            children = value if isinstance(value, list) else [value]
            for child in children:
                if isinstance(child, ast.AST):
                    visit(child, node)

    visit(tree, None)
    return found


def _short(node: ast.AST) -> str:
    text = ast.unparse(node).splitlines()[0]
    return text if len(text) <= 70 else text[:67] + "..."


Finder = Callable[[ast.AST], Optional[str]]
Applier = Callable[[ast.AST], ast.AST]  # returns the node that takes the site's place


def _find_compare(node: ast.AST) -> Optional[str]:
    if isinstance(node, ast.Compare) and type(node.ops[0]) in _COMPARE_FLIPS:
        flipped = _COMPARE_FLIPS[type(node.ops[0])]
        return f"{_short(node)}: {type(node.ops[0]).__name__} -> {flipped.__name__}"
    return None


def _apply_compare(node: ast.AST) -> ast.AST:
    if not isinstance(node, ast.Compare):
        raise TypeError(node)
    node.ops[0] = _COMPARE_FLIPS[type(node.ops[0])]()
    return node


def _find_not_remove(node: ast.AST) -> Optional[str]:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return f"{_short(node)}: drop `not`"
    return None


def _apply_not_remove(node: ast.AST) -> ast.AST:
    if not isinstance(node, ast.UnaryOp):
        raise TypeError(node)
    return node.operand


def _find_not_add(node: ast.AST) -> Optional[str]:
    if isinstance(node, (ast.If, ast.While, ast.IfExp)):
        return f"{_short(node.test)}: add `not` to the condition"
    return None


def _apply_not_add(node: ast.AST) -> ast.AST:
    if not isinstance(node, (ast.If, ast.While, ast.IfExp)):
        raise TypeError(node)
    node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
    return node


def _find_bool_const(node: ast.AST) -> Optional[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        return f"{node.value} -> {not node.value}"
    return None


def _apply_bool_const(node: ast.AST) -> ast.AST:
    if not isinstance(node, ast.Constant):
        raise TypeError(node)
    return ast.Constant(value=not node.value)


def _find_boolop(node: ast.AST) -> Optional[str]:
    if isinstance(node, ast.BoolOp):
        new = "or" if isinstance(node.op, ast.And) else "and"
        return f"{_short(node)}: -> `{new}`"
    return None


def _apply_boolop(node: ast.AST) -> ast.AST:
    if not isinstance(node, ast.BoolOp):
        raise TypeError(node)
    node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    return node


def _find_int_const(node: ast.AST) -> Optional[str]:
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, (int, float))
        and not isinstance(node.value, bool)
    ):
        return f"{node.value!r} -> {node.value + 1!r}"
    return None


def _apply_int_const(node: ast.AST) -> ast.AST:
    if not isinstance(node, ast.Constant) or not isinstance(node.value, (int, float)):
        raise TypeError(node)
    return ast.Constant(value=node.value + 1)


def _find_return(node: ast.AST) -> Optional[str]:
    if isinstance(node, ast.Return) and node.value is not None:
        value = node.value
        if isinstance(value, ast.Constant) and value.value is None:
            return None
        return f"{_short(node)}: -> return None"
    return None


def _apply_return(node: ast.AST) -> ast.AST:
    if not isinstance(node, ast.Return):
        raise TypeError(node)
    return ast.Return(value=ast.Constant(value=None))


def _find_delete_call(node: ast.AST) -> Optional[str]:
    if isinstance(node, ast.Expr) and isinstance(node.value, (ast.Call, ast.Await)):
        return f"{_short(node)}: delete the call"
    if isinstance(node, ast.Raise):
        return f"{_short(node)}: delete the raise"
    return None


def _apply_delete_call(node: ast.AST) -> ast.AST:
    if not isinstance(node, (ast.Expr, ast.Raise)):
        raise TypeError(node)
    return ast.Pass()


def _find_if_body(node: ast.AST) -> Optional[str]:
    if isinstance(node, ast.If) and not (
        len(node.body) == 1 and isinstance(node.body[0], ast.Pass)
    ):
        return f"if {_short(node.test)}: body -> pass"
    return None


def _apply_if_body(node: ast.AST) -> ast.AST:
    if not isinstance(node, ast.If):
        raise TypeError(node)
    node.body = [ast.Pass()]
    return node


OPERATORS: dict[str, tuple[Finder, Applier]] = {
    "compare": (_find_compare, _apply_compare),
    "not-remove": (_find_not_remove, _apply_not_remove),
    "not-add": (_find_not_add, _apply_not_add),
    "bool-const": (_find_bool_const, _apply_bool_const),
    "and-or": (_find_boolop, _apply_boolop),
    "int-plus-one": (_find_int_const, _apply_int_const),
    "return-none": (_find_return, _apply_return),
    "delete-statement": (_find_delete_call, _apply_delete_call),
    "if-body-pass": (_find_if_body, _apply_if_body),
}


def sites(source: str) -> list[Site]:
    """Every mutant the operators can make in ``source``, in a fixed order."""
    tree = ast.parse(source)
    found: list[Site] = []
    for index, node in enumerate(mutable_nodes(tree)):
        for operator, (finder, _apply) in OPERATORS.items():
            description = finder(node)
            if description is not None:
                lineno = getattr(node, "lineno", 0)
                found.append(Site(operator, index, lineno, description))
    return found


def mutate(source: str, site: Site) -> str:
    """``source`` with ``site``'s one change, as Python text (comments are lost, code is not)."""
    tree = ast.parse(source)
    target = mutable_nodes(tree)[site.node_index]
    apply = OPERATORS[site.operator][1]

    class _Replace(ast.NodeTransformer):
        def visit(self, node: ast.AST) -> ast.AST:
            if node is target:
                return apply(node)
            return self.generic_visit(node)

    mutated = ast.fix_missing_locations(_Replace().visit(tree))
    return ast.unparse(mutated)


def iter_mutants(source: str) -> Iterator[tuple[Site, str]]:
    """Each site with its mutated source (for tests of the tool itself)."""
    for site in sites(source):
        yield site, mutate(source, site)


__all__ = ["OPERATORS", "Site", "iter_mutants", "mutate", "sites"]

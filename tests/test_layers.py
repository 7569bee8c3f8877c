"""The package's layers: a lower layer never imports an upper one, and no module cycles.

Order, bottom up: errors and log; kernel (the kernel's view and verbs); host (readiness);
safety (lock, journal, writer, holders); pipeline (plan, engine, transition); daemon;
cli. Imports inside functions count too (a lazy import is still a dependency), and so do
imports made only for type checking.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import vfio_manager

PACKAGE = pathlib.Path(vfio_manager.__file__).parent
LAYERS = {"errors": 0, "log": 0, "kernel": 1, "host": 2, "safety": 3, "pipeline": 4}
LAYERS |= {"daemon": 5, "cli": 6, "__main__": 7, "__init__": 0}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else 0


def _imports(path: pathlib.Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "vfio_manager":
                found |= {f"vfio_manager.{alias.name}" for alias in node.names}
            elif node.module.startswith("vfio_manager."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("vfio_manager.")}
    return found


MODULES = {
    _module_name(p): _imports(p)
    for p in sorted(PACKAGE.rglob("*.py"))
    if "__pycache__" not in p.parts
}


def test_every_module_belongs_to_a_known_layer() -> None:
    unknown = [m for m in MODULES if len(m.split(".")) > 1 and m.split(".")[1] not in LAYERS]
    assert unknown == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_an_upper_layer(module: str) -> None:
    upward = [i for i in MODULES[module] if i in MODULES and _layer(i) > _layer(module)]
    assert upward == [], f"{module} (layer {_layer(module)}) imports {upward}"


def test_the_import_graph_has_no_cycle() -> None:
    graph = {m: {i for i in deps if i in MODULES and i != m} for m, deps in MODULES.items()}
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        path.append(module)
        for dep in sorted(graph[module]):
            if not dep.endswith("__init__"):
                visit(dep)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_the_checker_sees_an_upward_import() -> None:
    """The rule could fail: the engine importing the CLI would be caught."""
    assert _layer("vfio_manager.cli.main") > _layer("vfio_manager.pipeline.engine")
    assert "vfio_manager.kernel.sysfs" in MODULES["vfio_manager.pipeline.engine"] or any(
        i.startswith("vfio_manager.kernel") for i in MODULES["vfio_manager.pipeline.engine"]
    )

"""The fake kernel's structure: every kernel file a test can write reaches a rule, and the
rule modules import each other in one direction only (tests/harness/kernel/__init__.py)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

from tests.conftest import SnapshotKernel
from tests.harness import FakeKernel
from tests.harness.kernel import routes
from tests.harness.sysfsfile import KernelFile
from tests.harness.topologies import npu_node

KERNEL_PACKAGE = Path(__file__).parents[1] / "harness" / "kernel"


def _writable_files(k: FakeKernel) -> list[str]:
    found = []
    for folder, _dirs, files in os.walk(k.sys_root):
        for name in files:
            obj = k.fs.get_object(f"{folder}/{name}")
            if isinstance(obj, KernelFile) and obj.writable:
                found.append(k.canonical(f"{folder}/{name}"))
    return found


def test_every_writable_kernel_file_has_a_rule(kernel: FakeKernel) -> None:
    npu_node(kernel, count=1)
    kernel.add_function(
        "0000:10:00.0", vendor=0x1EFF, device=0x1250, pci_class=0x120000, iommu_group=40
    )
    kernel.add_vfs("0000:10:00.0", 2)
    writable = _writable_files(kernel)
    assert "bus/pci/devices/0000:10:00.0/sriov_numvfs" in writable
    assert "bus/pci/drivers/vfio-pci/bind" in writable
    assert [rel for rel in writable if routes.rule_for(rel) is None] == []
    assert routes.rule_for("bus/pci/devices/0000:10:00.0/vendor") is None


def test_every_writable_file_of_a_recorded_machine_has_a_rule(
    snapshot_kernel: SnapshotKernel,
) -> None:
    k = snapshot_kernel("q35-vfio-loaded")
    writable = _writable_files(k)
    assert "bus/pci/devices/0000:03:00.0/driver_override" in writable
    assert [rel for rel in writable if routes.rule_for(rel) is None] == []


def _kernel_imports(path: Path) -> set[str]:
    """The tests.harness.kernel modules (and the facade) one module imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "tests.harness.kernel":
                names.update(alias.name for alias in node.names)
            elif node.module.startswith("tests.harness.kernel."):
                names.add(node.module.rsplit(".", 1)[1])
            elif node.module == "tests.harness.fakekernel":
                names.add("fakekernel")
    return names


def test_kernel_modules_import_each_other_without_cycles() -> None:
    graph = {p.stem: _kernel_imports(p) for p in KERNEL_PACKAGE.glob("*.py")}
    assert not any("fakekernel" in deps for deps in graph.values())  # the facade is on top
    done: list[str] = []
    while len(done) < len(graph):
        ready = [m for m in graph if m not in done and graph[m] <= set(done)]
        assert ready, f"import cycle among {sorted(set(graph) - set(done))}"
        done.extend(sorted(ready))

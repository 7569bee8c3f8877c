"""Pure output: status rows, plans and reports as text tables or JSON, for stdout.

Nothing here reads sysfs or writes to a stream; the CLI decides where the lines go.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Optional

from vfio_manager.kernel.model import PciFunction, Topology
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.kernel.viability import group_viable

if TYPE_CHECKING:
    from vfio_manager.pipeline.engine import Report
    from vfio_manager.pipeline.plan import Plan


def device_record(topology: Topology, function: PciFunction, sysfs: Sysfs) -> dict[str, Any]:
    """The ``status --json`` record of one function (JSON nulls for absent values)."""
    node = topology.vfio_node(function)
    return {
        "bdf": function.bdf,
        "vendor": f"0x{function.vendor:04x}",
        "device": f"0x{function.device:04x}",
        "class": f"0x{function.pci_class:06x}",
        "product": function.product,
        "driver": function.driver,
        "driver_override": function.driver_override,
        "iommu_group": function.iommu_group,
        "group_viable": group_viable(topology, function),
        "vfio_node": sysfs.vfio_group_node(int(node)) if node is not None else None,
        "numa_node": function.numa_node,
        "sriov": function.sriov_role,
    }


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces; no trailing blanks."""
    body = [list(headers), *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in body) for i in range(len(headers))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]


def _cell(value: Optional[object]) -> str:
    return "-" if value is None else str(value)


def status_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    headers = ("BDF", "PRODUCT", "ID", "DRIVER", "OVERRIDE", "GROUP", "VIABLE", "VFIO NODE", "NUMA")
    viable = {True: "yes", False: "NO", None: "-"}
    rows = (
        (
            r["bdf"],
            _cell(r["product"]),
            f"{r['vendor'][2:]}:{r['device'][2:]}",
            _cell(r["driver"]),
            _cell(r["driver_override"]),
            _cell(r["iommu_group"]),
            viable[r["group_viable"]],
            _cell(r["vfio_node"]),
            _cell(r["numa_node"]),
        )
        for r in records
    )
    return table(headers, rows)


def plan_lines(plan: Plan) -> list[str]:
    """``--dry-run`` output: what would be written, function by function."""
    lines: list[str] = []
    for entry in plan.entries:
        function = entry.function
        name = function.product or f"{function.vendor:04x}:{function.device:04x}"
        head = f"{function.bdf} ({name}, now on {function.driver or 'no driver'})"
        if entry.refusal is not None:
            lines.append(f"{head}: refused: {entry.refusal}")
        elif entry.converged:
            lines.append(f"{head}: already converged, nothing to write")
        else:
            lines.append(f"{head}:")
            lines += [f"  {i}. {step.describe()}" for i, step in enumerate(entry.steps, 1)]
    lines.append(f"{plan.write_count} write(s) planned; nothing was written (dry run)")
    return lines


def report_lines(report: Report) -> list[str]:
    """The per-function summary of a bind/unbind run."""
    from vfio_manager.pipeline.engine import Status

    rows = []
    for o in report.outcomes:
        detail = o.reason or ""
        if o.status is Status.FAILED and o.restored_to:
            detail += f" (restored to {o.restored_to})"
        if o.remedy and o.status in (Status.FAILED, Status.REFUSED):
            detail += f"; remedy: {o.remedy}"
        rows.append((o.bdf, o.status.value, _cell(o.driver), str(o.writes), detail))
    lines = table(("BDF", "OUTCOME", "DRIVER", "WRITES", "DETAIL"), rows)
    counts = {s: sum(1 for o in report.outcomes if o.status is s) for s in Status}
    lines.append(
        ", ".join(f"{n} {s.value}" for s, n in counts.items()) + f"; {report.writes} write(s)"
    )
    return lines

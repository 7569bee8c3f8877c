"""The results of every command as text lines or one JSON document, for stdout (pure: it
reads no sysfs and writes to no stream)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from vfio_manager.pipeline.engine import Report
    from vfio_manager.pipeline.plan import Plan
    from vfio_manager.pipeline.queries import CheckResult, StatusResult
    from vfio_manager.pipeline.selection import Selector
    from vfio_manager.pipeline.transition import TransitionResult
    from vfio_manager.safety.intents import Intent


def to_json(data: Any) -> str:
    """Indented at a terminal, one line for a pipe (``indent`` is json's slow pure-Python path)."""
    import json

    return json.dumps(data, indent=2 if _stdout_is_terminal() else None)


def _stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced by a test, or closed
        return False


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces; no trailing blanks."""
    body = [list(headers), *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in body) for i in range(len(headers))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]


def _cell(value: Optional[object]) -> str:
    return "-" if value is None else str(value)


def _status_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    headers = (
        *("BDF", "PRODUCT", "ID", "DRIVER", "OVERRIDE", "GROUP", "VIABLE"),
        *("VFIO NODE", "VFIO CDEV", "NUMA"),
    )
    viable = {True: "yes", False: "NO", None: "-"}
    rows = (
        [r["bdf"], _cell(r["product"]), f"{r['vendor'][2:]}:{r['device'][2:]}"]
        + [_cell(r[k]) for k in ("driver", "driver_override", "iommu_group")]
        + [viable[r["group_viable"]], _cell(r["vfio_node"]), _cell(r["vfio_cdev"])]
        + [_cell(r["numa_node"])]
        for r in records
    )
    return _table(headers, rows)


def _plan_lines(plan: Plan) -> list[str]:
    """``--dry-run`` output: what would be written, function by function."""
    lines: list[str] = []
    for entry in plan.entries:
        function = entry.function
        name = function.product or f"{function.vendor:04x}:{function.device:04x}"
        head = f"{function.bdf} ({name}, now on {function.driver or 'no driver'})"
        if entry.interrupted is not None:
            head += f" [journal: {entry.interrupted.note}]"
        if entry.refusal is not None:
            lines.append(f"{head}: refused: {entry.refusal}")
        elif entry.converged:
            lines.append(f"{head}: already converged, nothing to write")
        else:
            lines.append(f"{head}:")
            lines += [f"  {i}. {step.describe()}" for i, step in enumerate(entry.steps, 1)]
    lines.append(f"{plan.write_count} write(s) planned; nothing was written (dry run)")
    return lines


def _report_lines(report: Report) -> list[str]:
    """The per-function summary of a bind/unbind run."""
    from vfio_manager.pipeline.engine import Result

    rows = []
    for o in report.outcomes:
        detail = o.reason or ""
        if o.result is Result.FAILED and o.restored_to:
            detail += f" (restored to {o.restored_to})"
        if o.remedy:  # failures and refusals; a changed one when the probe picked wrong
            detail += f"; remedy: {o.remedy}"
        if o.journal:
            detail = f"{detail}; journal: {o.journal}" if detail else f"journal: {o.journal}"
        if o.journal_error:
            detail += f"; JOURNAL NOT UPDATED: {o.journal_error}"
        rows.append((o.bdf, o.result.value, _cell(o.driver), str(o.writes), detail))
    counts = ", ".join(f"{sum(o.result is s for o in report.outcomes)} {s.value}" for s in Result)
    table = _table(("BDF", "OUTCOME", "DRIVER", "WRITES", "DETAIL"), rows)
    return [*table, f"{counts}; {report.writes} write(s)"]


def _nothing_selected(selector: Selector) -> str:
    from vfio_manager.pipeline.selection import Selector

    found = f"No PCI function matches {selector.describe()}"
    if selector == Selector():
        return f"{found}: no Rebellions NPU is present on this host (nothing to do)."
    return f"{found}: nothing to do."


def status_text(result: StatusResult, intents: Mapping[str, Intent]) -> list[str]:
    """The table, its warnings and one line per function the admin asked the daemon to
    leave on the host."""
    head = [result.host.line()] if result.host is not None else []
    if not result.records:
        return [*head, _nothing_selected(result.selector)]
    warnings: list[str] = []
    for found in result.warnings:
        warnings += [f"warning: {found['message']}", f"    remedy: {found['remedy']}"]
    held = [
        f"intent: {r['bdf']} {intents[r['bdf']].describe()}; `vfio-manager bind {r['bdf']}` "
        "hands it back to the daemon"
        for r in result.records
        if r["bdf"] in intents
    ]
    holders: list[str] = []  # with --holders
    if any(r.get("holders") for r in result.records):
        from vfio_manager.safety.holders import Holder

        holders = [
            f"held: {r['bdf']}: {Holder(h['pid'], h['command'], h['holds'], h['via']).describe()}"
            for r in result.records
            for h in r.get("holders") or ()
        ]
    lines = _status_lines(result.records) + _sriov_lines(result.records) + holders
    return head + lines + warnings + held


def _sriov_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    """Which PF carries which VFs, one line per selected PF that has VFs."""
    return [
        f"sriov: {r['bdf']} carries {len(r['vfs'])} VF(s): {', '.join(r['vfs'])}"
        for r in records
        if r["vfs"]
    ]


def status_json(result: StatusResult, intents: Mapping[str, Intent]) -> list[str]:
    devices = [  # the admin's "leave it on the host" (docs/daemon.md), or null
        {**r, "intent": intents[r["bdf"]].to_json() if r["bdf"] in intents else None}
        for r in result.records
    ]
    doc: dict[str, Any] = {"devices": devices}
    if result.host is not None:
        doc["host"] = result.host.to_json()
    doc["warnings"] = result.warnings
    return [to_json(doc)]


def transition_text(result: TransitionResult) -> list[str]:
    head = list(result.notes)
    if not result.plan.entries:
        return [*head, _nothing_selected(result.request.selector)]
    if result.report is None:
        return head + _plan_lines(result.plan)
    return head + _report_lines(result.report)


def transition_json(result: TransitionResult) -> list[str]:
    notes: dict[str, Any] = {"notes": list(result.notes)}
    if not result.request.dry_run:
        notes["journal_errors"] = list(result.journal_errors)
    if result.report is None:
        return [to_json({"dry_run": result.request.dry_run, **result.plan.to_json(), **notes})]
    doc = {**result.report.to_json(), **notes}
    doc["ok"] = doc["ok"] and result.exit_code == 0  # journal errors, an interruption
    return [to_json(doc)]


def error_json(code: int, message: str, remedy: Optional[str], **details: Any) -> str:
    """The one document ``--json`` prints when a command could not run (any exit code)."""
    return to_json({"error": {"code": code, "message": message, "remedy": remedy, **details}})


def check_text(result: CheckResult, mark: Optional[Callable[[bool], str]] = None) -> list[str]:
    head = (
        f"Host readiness for {result.functions} function(s) matching "
        f"{result.selector.describe()} (host root {result.host_root}, kernel {result.release}):"
    )
    failed = len(result.preflight.failed)
    if failed:
        counted = sum(1 for c in result.preflight.checks if not c.advisory)  # not warnings
        refusing = "bind and bind-all refuse until they pass"
        tail = f"NOT READY: {failed} of {counted} checks failed; {refusing}"
    else:
        tail = "READY: the selected functions can be given to VMs"
        if warned := len(result.preflight.warnings):
            tail += f" ({warned} warning(s), marked !)"
    return [head, *result.preflight.lines(mark), tail]


def check_json(result: CheckResult) -> list[str]:
    return [to_json(result.preflight.to_json())]

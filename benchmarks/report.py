"""Tables of figures as Markdown, so a run's output can be pasted into docs/performance.md."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class Table:
    title: str
    headers: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # raw figures for --json

    def lines(self) -> list[str]:
        body = [list(self.headers), *([str(c) for c in row] for row in self.rows)]
        widths = [max(len(row[i]) for row in body) for i in range(len(self.headers))]

        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

        out = [f"### {self.title}", "", line(body[0])]
        out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        out += [line(row) for row in body[1:]]
        if self.notes:
            out.append("")
            out += [f"- {note}" for note in self.notes]
        out.append("")
        return out


def seconds(value: float) -> str:
    """``12.3 ms`` below a second, ``1.23 s`` above."""
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def spread(low: float, high: float) -> str:
    return f"{seconds(low)} to {seconds(high)}"


def ratio(value: float, floor: float) -> str:
    return f"{value / floor:.2f}x" if floor > 0 else "-"


def codes(found: set[int]) -> str:
    return ",".join(str(c) for c in sorted(found))


def mib(value: Optional[float]) -> str:
    return f"{value:.1f} MiB" if value is not None else "n/a (no GNU time)"

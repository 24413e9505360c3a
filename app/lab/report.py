"""What an experiment returns, and how it is shown: a table in the terminal, or JSON.

Rows hold raw numbers (tests assert on them); only rendering formats them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from io import StringIO

from rich.console import Console
from rich.table import Table as RichTable

Cell = str | int | float | bool | None

BAR_WIDTH = 40


@dataclass(frozen=True)
class BarChart:
    """Counts per label (records per partition), drawn as horizontal bars."""

    title: str
    bars: list[tuple[str, int]]


@dataclass(frozen=True)
class Table:
    """One experiment's result: the course's claim, what was measured, and notes on why."""

    title: str
    claim: str
    columns: list[str]
    rows: list[dict[str, Cell]]
    notes: list[str] = field(default_factory=list)
    charts: list[BarChart] = field(default_factory=list)

    def column(self, name: str) -> list[Cell]:
        return [row[name] for row in self.rows]

    def row(self, column: str, value: Cell) -> dict[str, Cell]:
        """The row whose `column` holds `value` (a mode, a strategy)."""
        [found] = [row for row in self.rows if row[column] == value]
        return found


def _cell(value: Cell) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return value


def bars(chart: BarChart, width: int = BAR_WIDTH) -> str:
    """A chart as text: one line per label, the bar scaled to the largest count."""
    top = max((count for _, count in chart.bars), default=0) or 1
    label_width = max((len(label) for label, _ in chart.bars), default=0)
    lines = [chart.title]
    for label, count in chart.bars:
        bar = "█" * round(width * count / top)
        lines.append(f"  {label:>{label_width}} {bar:<{width}} {count}")
    return "\n".join(lines)


def render_text(tables: list[Table], width: int = 200) -> str:
    out = StringIO()
    console = Console(file=out, width=width, force_terminal=False, color_system=None)
    for table in tables:
        console.print(f"\n[bold]{table.title}[/bold]")
        console.print(f"The course: \u201c{table.claim}\u201d", style="italic", markup=False)
        rich_table = RichTable(*table.columns, show_lines=False)
        for row in table.rows:
            rich_table.add_row(*(_cell(row.get(column)) for column in table.columns))
        console.print(rich_table)
        for chart in table.charts:
            console.print(bars(chart), markup=False, highlight=False)
        for note in table.notes:
            console.print(f"- {note}", markup=False, highlight=False)
    return out.getvalue()


def render_json(tables: list[Table]) -> str:
    return json.dumps([asdict(table) for table in tables], indent=2)

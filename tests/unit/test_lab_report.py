"""The lab's tables: raw numbers in, readable text or JSON out."""

from __future__ import annotations

import json

import pytest

from app.cli import build_parser
from app.lab.cli import EXPERIMENTS
from app.lab.report import BarChart, Table, bars, render_json, render_text


def _table() -> Table:
    return Table(
        title="Delivery semantics",
        claim="At most once: Messages may be lost but never duplicated",
        columns=["mode", "lost", "orders_per_s"],
        rows=[
            {"mode": "at_most_once", "lost": 1234, "orders_per_s": 9876.54},
            {"mode": "exactly_once", "lost": 0, "orders_per_s": 3.14159},
        ],
        notes=["lost: committed before processing, then killed"],
        charts=[BarChart("records per partition", [("p0", 10), ("p1", 5)])],
    )


def test_text_quotes_the_claim_and_formats_the_numbers() -> None:
    text = render_text([_table()])
    assert "\u201cAt most once: Messages may be lost but never duplicated\u201d" in text
    assert "1,234" in text
    assert "9,876.5" in text
    assert "3.14" in text
    assert "- lost: committed before processing, then killed" in text


def test_json_keeps_the_raw_numbers() -> None:
    [table] = json.loads(render_json([_table()]))
    assert table["rows"][0] == {"mode": "at_most_once", "lost": 1234, "orders_per_s": 9876.54}
    assert table["charts"][0]["bars"] == [["p0", 10], ["p1", 5]]


def test_bars_scale_to_the_largest_count() -> None:
    lines = bars(BarChart("c", [("p0", 10), ("p1", 5), ("p2", 0)]), width=10).splitlines()
    assert lines[1].split()[1] == "█" * 10
    assert lines[2].split()[1] == "█" * 5
    assert lines[3].split() == ["p2", "0"]


def test_a_row_is_found_by_its_name_and_only_once() -> None:
    table = _table()
    assert table.row("mode", "exactly_once")["lost"] == 0
    with pytest.raises(ValueError, match="unpack"):
        table.row("mode", "at_least_once")


@pytest.mark.parametrize("experiment", [*EXPERIMENTS, "all"])
def test_every_experiment_is_a_command_with_json_output(experiment: str) -> None:
    args = build_parser().parse_args(["lab", experiment, "--json"])
    assert args.experiment == experiment
    assert args.json

"""`orders lab analytics`, a short run on the real broker and PostgreSQL: the exact mode counts
every order once under kill -9; the fast mode's error is measured (its sign is not assumed).

The table is checked against what it does not compute itself: the run's topic read back (every
order, in the window of its append time) and each group's windows as stored in PostgreSQL."""

from __future__ import annotations

import argparse
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncEngine

from app.lab.analytics import add_arguments, run_from_args
from app.lab.analytics.members import counted
from app.lab.report import Cell
from app.lab.workspace import lab_workspace
from tests.integration.conftest import make_settings
from tests.integration.endpoints import Endpoints
from tests.integration.kafka_tools import read_topic
from tests.integration.test_analytics_exact import expected_windows, stored_windows

ORDERS = 1500


def number(cell: Cell) -> float:
    assert isinstance(cell, (int, float)), cell
    return cell


async def test_the_exact_mode_counts_every_order_once_under_kill_9(
    endpoints: Endpoints, database_url: str, engine: AsyncEngine
) -> None:
    settings = make_settings(endpoints, database_url)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = ["--orders", str(ORDERS), "--rate", "300", "--kill-every", "1.5"]
    options += ["--burst", "3000", "--deadline", "120"]
    args = parser.parse_args(options)
    args.keep = True  # the run's windows stay, to be checked here (the session's database)
    async with lab_workspace(settings) as workspace:
        [table] = await run_from_args(settings, workspace, args)
        records = await read_topic(endpoints.kafka_bootstrap, workspace.topic_name("analytics"))
    groups = {mode: workspace.group(f"analytics-{mode}") for mode in ("exact", "fast")}

    exact, fast = table.row("mode", "exact"), table.row("mode", "fast")
    for row in (exact, fast):
        assert row["orders"] == ORDERS  # every order was acknowledged
        assert number(row["kills"]) >= 2  # killed -9 several times while counting
        assert number(row["orders/s"]) > 0
    # The oracle: the topic itself, every order in the window of its broker append time.
    assert len(records) == ORDERS
    expected = expected_windows(records, settings.analytics.window_s)
    assert await stored_windows(engine, groups["exact"]) == expected
    assert exact["counted"] == ORDERS
    assert exact["error"] == 0
    assert Decimal(str(exact["EUR revenue error"])) == 0
    assert Decimal(str(exact["USD revenue error"])) == 0
    # The fast mode's row says what its own windows hold, set against the topic.
    fast_sums = await counted(engine, groups["fast"])
    fast_counted = sum(orders for orders, _ in fast_sums.values())
    assert fast["counted"] == fast_counted
    assert fast["error"] == fast_counted - len(records)
    for currency in ("EUR", "USD"):
        on_topic = sum(
            (revenue for (_, c), (_, revenue) in expected.items() if c == currency), Decimal(0)
        )
        stored = fast_sums.get(currency, (0, Decimal(0)))[1]
        assert Decimal(str(fast[f"{currency} revenue error"])) == stored - on_topic
    assert len(table.notes) >= 2

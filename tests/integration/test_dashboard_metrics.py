"""Every metric the dashboard and the Prometheus rules query is one the running services export.

A typo in a panel's query, or a metric renamed in the code, shows in Grafana as an empty panel,
and in an alert as silence: nothing fails. Here the real processes (`orders api` and two `orders
worker`s, tests/integration/live_stack.py) take a few orders, and their /metrics pages are held
against the names in monitoring/grafana/dashboards/orders.json and monitoring/prometheus/rules
(recorded series resolved to what their rules read). And the other way round: every `orders_`
metric the services export is on the dashboard or in a rule, so none is forgotten there.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx

from app.settings import Settings
from tests.integration.api_client import order_body
from tests.integration.live_stack import LiveStack, live_stack
from tests.monitoring_queries import dashboard_expressions, exported_names, rule_expressions

ORDERS = 6
# Series that appear on their own time: the lag gauges at the worker's next sample
# (WORKER_LAG_INTERVAL_S), the end-to-end histogram once the orders are stored.
SETTLE_S = 30.0

_TYPE = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)$")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]")
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
}


def families(text: str) -> dict[str, set[str]]:
    """Each family a Prometheus text page declares -> the names it makes queryable: its
    type's (a histogram's _bucket, _sum, _count; a counter's _total) and its samples'. A
    labelled family with no child yet has no sample, and is queryable once it has one."""
    found: dict[str, set[str]] = {}
    current: set[str] = set()
    for line in text.splitlines():
        declared = _TYPE.match(line)
        if declared:
            name, kind = declared.groups()
            base = name.removesuffix("_total") if kind == "counter" else name
            current = found.setdefault(base, {base})
            current.update(base + suffix for suffix in _SUFFIXES.get(kind, ()))
        elif line and not line.startswith("#") and (sample := _SAMPLE.match(line)):
            current.add(sample.group(1))
    return found


async def scrape(stack: LiveStack) -> dict[str, set[str]]:
    """The families of the API's and the workers' /metrics now."""
    urls = [f"{stack.base_url}/metrics"]
    urls += [f"http://127.0.0.1:{worker.metrics_port}/metrics" for worker in stack.workers]
    found: dict[str, set[str]] = {}
    async with httpx.AsyncClient(timeout=5.0) as client:
        for url in urls:
            page = await client.get(url)
            assert page.status_code == 200, f"{url}: {page.status_code} {page.text:.300}"
            for family, names in families(page.text).items():
                found.setdefault(family, set()).update(names)
    return found


def queryable(found: dict[str, set[str]]) -> set[str]:
    return set().union(*found.values())


async def exported_after_orders(
    stack: LiveStack, wanted: set[str], customer: str
) -> dict[str, set[str]]:
    """The families the API and the workers export once a few orders went through: scraped
    until every wanted name is there or SETTLE_S passes."""
    async with stack.client(timeout=30.0) as client:
        for n in range(1, ORDERS + 1):
            response = await client.post("/orders", json=order_body(customer, n))
            assert response.status_code == 202, response.text
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_S
    while True:
        found = await scrape(stack)
        if wanted <= queryable(found) or loop.time() > deadline:
            return found
        await asyncio.sleep(1.0)


async def test_every_metric_queried_is_exported_and_every_exported_one_is_queried(
    settings: Settings, run_id: str, tmp_path: Path
) -> None:
    on_dashboard = exported_names(dashboard_expressions())
    in_rules = exported_names(rule_expressions())
    assert len(on_dashboard) > 20, sorted(on_dashboard)  # the parse found the panels' queries
    assert {"orders_partition_stalled", "orders_consumer_lag_records"} <= in_rules

    async with live_stack(settings, tmp_path, workers=2) as stack:
        found = await exported_after_orders(stack, on_dashboard | in_rules, f"{run_id}.c1")
        logs = stack.logs()

    exported = queryable(found)
    missing = on_dashboard - exported
    assert not missing, f"the dashboard queries names nothing exports: {sorted(missing)}\n{logs}"
    missing = in_rules - exported
    assert not missing, f"the rules query names nothing exports: {sorted(missing)}\n{logs}"

    # The other way round: an `orders_` family on no panel and in no rule is a forgotten one.
    watched = on_dashboard | in_rules
    unwatched = {
        family
        for family, names in found.items()
        if family.startswith("orders_") and not names & watched
    }
    assert not unwatched, f"exported, but on no panel and in no rule: {sorted(unwatched)}"

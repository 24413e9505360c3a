#!/usr/bin/env python3
"""The Grafana dashboard "Orders", generated with grafana-foundation-sdk.

    .venv/bin/python scripts/monitoring_tools/dashboard.py          # writes OUTPUT (below)
    .venv/bin/python scripts/monitoring_tools/dashboard.py --check  # exit 1 if it is stale

The panels follow the course's monitoring section (producer: send rate, batch size, error rate,
request latency; consumer: lag, processing rate, commit rate, rebalances) plus what this service
adds (503s by reason, end-to-end latency, stalls, records set aside). Every query names metrics
of the contract or series recorded by monitoring/prometheus/rules/orders-recording.yml;
tests/integration/test_dashboard_metrics.py checks each name against live /metrics scrapes, and
tests/unit/test_monitoring_rules.py that the committed JSON is this script's output.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
)
from grafana_foundation_sdk.models.dashboard import DashboardCursorSync, DataSourceRef

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "monitoring" / "grafana" / "dashboards" / "orders.json"
# The provisioned data source's uid (monitoring/grafana/provisioning/datasources/prometheus.yml).
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
RATE = "$__rate_interval"  # Grafana's: at least 4 scrapes, whatever the zoom


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # or "stat": one number now
    width: int = 8  # of the grid's 24 columns


def quantile(q: float, histogram: str, by: str = "") -> str:
    groups = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({groups}) (rate({histogram}_bucket[{RATE}])))"


def average(histogram: str) -> str:
    return f"sum(rate({histogram}_sum[{RATE}])) / sum(rate({histogram}_count[{RATE}]))"


def rate(counter: str, by: str = "") -> str:
    if by:
        return f"sum by ({by}) (rate({counter}[{RATE}]))"
    return f"sum(rate({counter}[{RATE}]))"


PRODUCER = (
    Panel(
        "Send rate",
        "Records the broker acknowledged (acks=all), per topic; accepted orders (202) beside.",
        "reqps",
        (
            Query(rate("orders_producer_records_total", "topic"), "acknowledged {{topic}}"),
            Query(
                rate('orders_http_requests_total{route="/orders", status="202"}'),
                "accepted (202)",
            ),
        ),
    ),
    Panel(
        "Batch size",
        "Records per partition batch handed to aiokafka (p50, p99, mean).",
        "short",
        (
            Query(quantile(0.5, "orders_producer_batch_records"), "p50"),
            Query(quantile(0.99, "orders_producer_batch_records"), "p99"),
            Query(average("orders_producer_batch_records"), "mean"),
        ),
    ),
    Panel(
        "Error rate",
        "Produce failures by exception class; producers retired and replaced.",
        "reqps",
        (
            Query(rate("orders_producer_errors_total", "error"), "{{error}}"),
            Query(rate("orders_producer_replacements_total"), "producer replaced"),
        ),
    ),
    Panel(
        "Request latency (p99)",
        "HTTP request duration per route, and the broker's acks=all acknowledgement.",
        "s",
        (
            Query("orders:http_request_duration_seconds:p99_5m", "{{route}}"),
            Query(quantile(0.99, "orders_kafka_ack_seconds"), "broker ack"),
        ),
    ),
    Panel(
        "503s by reason",
        "Orders refused with 503, by reason (broker not connected, ack timeout, overloaded, ...).",
        "reqps",
        (Query(rate("orders_http_unavailable_total", "reason"), "{{reason}}"),),
    ),
    Panel(
        "Requests by status",
        "Every response, by status; requests in flight; refusals at the HTTP edge.",
        "reqps",
        (
            Query(rate("orders_http_requests_total", "status"), "{{status}}"),
            Query("sum(orders_http_requests_in_flight)", "in flight"),
            Query(rate("orders_http_edge_refusals_total", "reason"), "edge: {{reason}}"),
        ),
    ),
    Panel(
        "503 ratio",
        "Share of order requests answered 503 over 5 minutes (probes left out). Alert: > 5%.",
        "percentunit",
        (Query("orders:http_unavailable_ratio:rate5m", "503 ratio"),),
        kind="stat",
        width=6,
    ),
    Panel(
        "Producers connected",
        "API processes whose producer is connected to the broker.",
        "short",
        (Query("sum(orders_producer_connected)", "connected"),),
        kind="stat",
        width=6,
    ),
    Panel(
        "Workers up",
        "Members of the worker group scraped, against the expected size (a recording rule).",
        "short",
        (
            Query("orders:worker_group_members", "up"),
            Query("orders:worker_group_expected_members", "expected"),
        ),
        kind="stat",
        width=6,
    ),
    Panel(
        "Orders stored",
        "Orders newly stored per second, all workers.",
        "reqps",
        (Query("orders:stored:rate1m", "stored"),),
        kind="stat",
        width=6,
    ),
)

CONSUMER = (
    Panel(
        "Lag per partition",
        "Log end (last stable offset) minus the position stored in PostgreSQL. Scale the "
        "group when every partition grows; look at one partition's owner when one does.",
        "short",
        (Query("orders:partition_lag_records:max", "{{topic}}/{{partition}}"),),
        width=12,
    ),
    Panel(
        "Processing rate",
        "Records handed to batches per partition; orders stored; redeliveries absorbed.",
        "reqps",
        (
            Query("orders:partition_records_fetched:rate1m", "fetched {{topic}}/{{partition}}"),
            Query("orders:stored:rate1m", "stored"),
            Query(rate("orders_duplicates_absorbed_total"), "duplicates absorbed"),
        ),
        width=12,
    ),
    Panel(
        "Commit rate",
        "Kafka offset commits (the mirror of the positions in PostgreSQL) and their failures.",
        "reqps",
        (
            Query(rate("orders_kafka_commits_total"), "commits"),
            Query(rate("orders_kafka_commit_failures_total"), "commit failures"),
        ),
    ),
    Panel(
        "Rebalances",
        "Partitions assigned and revoked per member over 5 minutes; partitions each owns.",
        "short",
        (
            Query(
                "sum by (event) (increase(orders_worker_rebalances_total[5m]))",
                "{{event}} (5 min)",
            ),
            Query("orders_worker_assigned_partitions", "owned by {{instance}}"),
        ),
    ),
    Panel(
        "End-to-end latency",
        "From the API's accepted_at to the stored row's commit: what a customer waits for. "
        "Alert: p99 > 5 s for 5 minutes.",
        "s",
        (
            Query(quantile(0.5, "orders_end_to_end_seconds"), "p50"),
            Query("orders:end_to_end_seconds:p99_5m", "p99"),
        ),
    ),
    Panel(
        "Stalls",
        "1 while a partition is STALLED or STOPPED, or its lag grows at every sample "
        "(WARNING); a member whose /readyz fails; a member paused for a back-off.",
        "short",
        (
            Query(
                "max by (topic, partition) (orders_partition_stalled)",
                "stalled {{topic}}/{{partition}}",
            ),
            Query(
                "max by (topic, partition) (orders_partition_lag_growing)",
                "lag growing {{topic}}/{{partition}}",
            ),
            Query("1 - orders_worker_ready", "not ready {{instance}}"),
            Query("orders_worker_backing_off", "backing off {{instance}}"),
        ),
    ),
    Panel(
        "Worker batches",
        "Records per batch transaction (p50, p99) and batches retried after a back-off.",
        "short",
        (
            Query(quantile(0.5, "orders_worker_batch_records"), "records p50"),
            Query(quantile(0.99, "orders_worker_batch_records"), "records p99"),
            Query(
                "sum(increase(orders_worker_batch_retries_total[5m]))", "batches retried (5 min)"
            ),
        ),
    ),
    Panel(
        "Transaction latency (p99)",
        "One batch's PostgreSQL transaction, all workers.",
        "s",
        (Query(quantile(0.99, "orders_worker_transaction_seconds"), "p99"),),
    ),
    Panel(
        "Records set aside",
        "Per 5 minutes: dead-lettered, quarantined, expired (appended after their deadline), "
        "fenced partition-batches, offsets skipped. Run `orders dlq list`.",
        "short",
        (
            Query("sum(increase(orders_dead_lettered_total[5m]))", "dead-lettered"),
            Query("sum(increase(orders_quarantined_total[5m]))", "quarantined"),
            Query("sum(increase(orders_expired_total[5m]))", "expired"),
            Query("sum(increase(orders_fenced_total[5m]))", "fenced"),
            Query("sum(increase(orders_skipped_offsets_total[5m]))", "skipped offsets"),
        ),
        width=24,
    ),
)


def build_panel(panel: Panel, panel_id: int) -> timeseries.Panel | stat.Panel:
    builder: timeseries.Panel | stat.Panel
    if panel.kind == "stat":
        last = common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)
        builder = stat.Panel().reduce_options(last).graph_mode(BigValueGraphMode.AREA)
    else:
        legend = (
            common.VizLegendOptions()
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        builder = timeseries.Panel().legend(legend).fill_opacity(10).line_width(1)
    builder = (
        builder.id(panel_id)
        .title(panel.title)
        .description(panel.description)
        .datasource(DATASOURCE)
        .unit(panel.unit)
        .span(panel.width)
        .height(4 if panel.kind == "stat" else 8)
    )
    for index, query in enumerate(panel.queries):
        builder = builder.with_target(
            prometheus.Dataquery()
            .expr(query.expr)
            .legend_format(query.legend)
            .ref_id(chr(ord("A") + index))
        )
    return builder


def build() -> dict[str, object]:
    """The dashboard as the JSON object Grafana provisions."""
    board = (
        dashboard.Dashboard("Orders")
        .uid("orders")
        .description("The orders service: the API's producer, the worker group's consumers.")
        .tags(["orders", "kafka"])
        .refresh("10s")
        .time("now-1h", "now")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .readonly()
    )
    panel_id = 0
    rows = (("Producer: the API", PRODUCER), ("Consumer: the worker group", CONSUMER))
    for title, panels in rows:
        panel_id += 1
        board = board.with_row(dashboard.Row(title).id(panel_id))
        for panel in panels:
            panel_id += 1
            board = board.with_panel(build_panel(panel, panel_id))
    document: dict[str, object] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return document


def as_rules() -> dict[str, object]:
    """Every panel's query as a recording rule, for `promtool check rules` to parse (`make
    lint`): a typo in PromQL fails there, not as an empty panel. Grafana's own variable
    becomes a plain range."""
    rules = []
    for panel in PRODUCER + CONSUMER:
        for index, query in enumerate(panel.queries):
            slug = "_".join(panel.title.lower().replace("(", "").replace(")", "").split())
            record = f"dashboard:{slug.replace('-', '_').replace('503', 'http_503')}:{index}"
            rules.append({"record": record, "expr": query.expr.replace(RATE, "1m")})
    return {"groups": [{"name": "dashboard-queries", "rules": rules}]}


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--as-rules", type=Path, help="write the queries as a rules file")
    args = parser.parse_args()
    if args.as_rules:
        args.as_rules.write_text(json.dumps(as_rules(), indent=2) + "\n")
        return 0
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(ROOT)} is stale: run {Path(__file__).relative_to(ROOT)}")
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

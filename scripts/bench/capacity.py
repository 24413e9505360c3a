#!/usr/bin/env python3
"""A capacity model on paper, from measured parts: what a deployment needs for 1k, 10k and 100k
orders/s, from the latest `make bench-e2e` run (scripts/bench/results/e2e.json).

The parts, from the run's best configuration (the most orders stored per second): CPU per stored
order of the API, a worker, the broker and PostgreSQL, and the bytes of an order over HTTP, in
Kafka (as a record, and on the broker's disk) and in PostgreSQL (the table, the WAL). A Python
process uses one core, so 1 / (API CPU per order) is what one API core takes, and
1 / (worker CPU per order) what one worker (and so one partition: one partition is drained by
one worker, one batch at a time) takes. Measured on one 2-core machine where everything shared
the cores, at the batch sizes that load made: a conservative figure (batches grow with load,
and a batch's fixed costs are shared by more orders).

The assumptions are the named constants below, printed with the table. The model says where
the design stops scaling: the API, the workers and the brokers scale out; one PostgreSQL
primary does not, and the per-customer sequence (app/worker/order_store.py) ties each
customer's rows to one database.

    .venv/bin/python scripts/bench/capacity.py [--from PATH] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "e2e.json"
RATES = (1_000, 10_000, 100_000)  # orders/s to plan for, at the daily peak

# --- the assumptions -------------------------------------------------------------------------
# Run every process at this share of its CPU at the planned peak: room for bursts, for the
# share of a lost node, for garbage collection, checkpoints and compaction.
TARGET_UTILISATION = 0.6
# Production keeps every record on three brokers (min.insync.replicas=2); each replica costs a
# broker about what the leader's copy costs (it fetches, appends and indexes the same bytes):
# broker CPU, disk and network are the measured (replication factor 1) figures times this.
REPLICATION_FACTOR = 3
# At least this many API processes and workers, so that losing one leaves the service up.
MIN_REPLICAS = 2
# Partitions: this many times the workers the rate needs. Adding partitions later costs an
# intake pause (`orders topics grow`), so a topic is made with room to double its workers.
PARTITION_HEADROOM = 2
# Cores of one broker machine.
BROKER_CORES = 8
# The largest single PostgreSQL primary to plan on (one machine's cores).
POSTGRES_MAX_CORES = 64
# The WAL one primary can write and stream to its synchronous standby, sustained (bytes/s):
# NVMe and a 10 Gb/s link; a figure to measure on the real hardware, not a law.
POSTGRES_MAX_WAL_BYTES_PER_S = 200e6
# One primary's storage, and how many days of orders it must hold: orders are never deleted
# here, so the table only grows (the 10 TB of one large volume; a year of history).
POSTGRES_MAX_STORAGE_BYTES = 10e12
POSTGRES_HISTORY_DAYS = 365
# Kafka's own default retention (log.retention.hours=168), used when app/topics.py sets none.
KAFKA_DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000
DAY_S = 86_400


@dataclass(frozen=True)
class Measured:
    """The parts, per stored order: CPU in microseconds, sizes in bytes."""

    source: str
    api_us: float
    worker_us: float
    broker_us: float
    postgres_us: float
    http_request_bytes: float
    kafka_record_bytes: float
    kafka_log_bytes: float
    postgres_table_bytes: float
    postgres_wal_bytes: float
    stored_per_s: float

    @property
    def per_api_core(self) -> float:
        return 1e6 / self.api_us

    @property
    def per_worker(self) -> float:
        """Also one partition's ceiling, and so one customer's."""
        return 1e6 / self.worker_us


def measured_from(results: dict[str, Any]) -> Measured:
    """The best configuration's parts (the one that stored the most orders per second)."""
    best = max(results["configs"], key=lambda config: config["stored_per_s"])
    cpu, size = best["cpu_us_per_order"], best["bytes_per_order"]
    return Measured(
        source=(
            f"{best['config']} of `make bench-e2e` at {results['measured_at']} "
            f"(commit {results.get('commit') or '?'}), {best['stored_per_s']:,.0f} orders/s stored"
        ),
        # Several API processes each use a share: per order, their sum is what the API costs.
        api_us=cpu["api"],
        # Likewise the workers: together they cost this per order; one worker costs the same
        # per order it stores.
        worker_us=cpu["worker"],
        broker_us=cpu["broker"],
        postgres_us=cpu["postgres"],
        http_request_bytes=size["http_request"],
        kafka_record_bytes=size["kafka_record"],
        kafka_log_bytes=size["kafka_log"],
        postgres_table_bytes=size["postgres_table"],
        postgres_wal_bytes=size["postgres_wal"],
        stored_per_s=best["stored_per_s"],
    )


@dataclass(frozen=True)
class Assumptions:
    utilisation: float = TARGET_UTILISATION
    replication_factor: int = REPLICATION_FACTOR
    min_replicas: int = MIN_REPLICAS
    partition_headroom: int = PARTITION_HEADROOM
    broker_cores: int = BROKER_CORES
    postgres_max_cores: int = POSTGRES_MAX_CORES
    postgres_max_wal_bytes_per_s: float = POSTGRES_MAX_WAL_BYTES_PER_S
    postgres_max_storage_bytes: float = POSTGRES_MAX_STORAGE_BYTES
    postgres_history_days: float = POSTGRES_HISTORY_DAYS
    retention_s: float = KAFKA_DEFAULT_RETENTION_MS / 1000


def retention_s_of_topics() -> float:
    """The orders topic's retention as app/topics.py sets it, else Kafka's default."""
    from app.settings import KafkaSettings
    from app.topics import topic_configs

    configs = topic_configs(KafkaSettings())
    return int(configs.get("retention.ms", KAFKA_DEFAULT_RETENTION_MS)) / 1000


@dataclass(frozen=True)
class Plan:
    rate: float
    api_processes: int
    workers: int
    partitions: int
    brokers: int
    broker_cores: float
    postgres_cores: float
    postgres_rows_per_s: float
    postgres_wal_bytes_per_s: float
    postgres_bytes_per_day: float
    postgres_days_to_fill: float  # POSTGRES_MAX_STORAGE_BYTES at this rate, all day
    http_bytes_per_s: float
    kafka_produce_bytes_per_s: float
    kafka_disk_bytes_per_day: float
    kafka_disk_bytes_at_retention: float


def cores_for(rate: float, us_per_order: float, utilisation: float) -> float:
    """Cores that keep `rate` at `utilisation` of each, for a part costing us_per_order."""
    return rate * us_per_order / 1e6 / utilisation


def plan(measured: Measured, rate: float, assumptions: Assumptions) -> Plan:
    a = assumptions
    api = max(a.min_replicas, math.ceil(cores_for(rate, measured.api_us, a.utilisation)))
    workers = max(a.min_replicas, math.ceil(cores_for(rate, measured.worker_us, a.utilisation)))
    broker_cores = cores_for(rate, measured.broker_us * a.replication_factor, a.utilisation)
    brokers = max(a.replication_factor, math.ceil(broker_cores / a.broker_cores))
    kafka_day = rate * measured.kafka_log_bytes * a.replication_factor * DAY_S
    return Plan(
        rate=rate,
        api_processes=api,
        workers=workers,
        partitions=workers * a.partition_headroom,
        brokers=brokers,
        broker_cores=broker_cores,
        postgres_cores=cores_for(rate, measured.postgres_us, a.utilisation),
        postgres_rows_per_s=rate,
        postgres_wal_bytes_per_s=rate * measured.postgres_wal_bytes,
        postgres_bytes_per_day=rate * measured.postgres_table_bytes * DAY_S,
        postgres_days_to_fill=a.postgres_max_storage_bytes
        / (rate * measured.postgres_table_bytes * DAY_S),
        http_bytes_per_s=rate * measured.http_request_bytes,
        kafka_produce_bytes_per_s=rate * measured.kafka_log_bytes,
        kafka_disk_bytes_per_day=kafka_day,
        kafka_disk_bytes_at_retention=kafka_day * a.retention_s / DAY_S,
    )


@dataclass(frozen=True)
class Limit:
    resource: str
    orders_per_s: float  # math.inf: scales out
    why: str


def limits(measured: Measured, assumptions: Assumptions) -> list[Limit]:
    """Where each resource stops, at the target utilisation, lowest first."""
    a = assumptions
    found = [
        Limit(
            "API processes",
            math.inf,
            f"{measured.per_api_core * a.utilisation:,.0f} orders/s per process",
        ),
        Limit(
            "workers and partitions",
            math.inf,
            f"with the partitions: {measured.per_worker * a.utilisation:,.0f} orders/s per "
            "worker, one worker per partition",
        ),
        Limit(
            "brokers",
            math.inf,
            f"{a.broker_cores * a.utilisation * 1e6 / measured.broker_us:,.0f} orders/s of "
            f"leader work per {a.broker_cores}-core broker, replicas on top",
        ),
        Limit(
            "one customer (one partition)",
            measured.per_worker * a.utilisation,
            "a customer's orders are on one partition, stored by the one worker that owns it, "
            "a batch at a time, each numbered from the customer's last stored sequence",
        ),
        Limit(
            "one PostgreSQL primary: CPU",
            a.postgres_max_cores * a.utilisation * 1e6 / measured.postgres_us,
            f"{measured.postgres_us:,.0f} us per order on a {a.postgres_max_cores}-core machine",
        ),
        Limit(
            "one PostgreSQL primary: WAL",
            a.postgres_max_wal_bytes_per_s * a.utilisation / measured.postgres_wal_bytes,
            f"{measured.postgres_wal_bytes:,.0f} bytes of WAL per order against "
            f"{bytes_text(a.postgres_max_wal_bytes_per_s)}/s written and streamed",
        ),
        Limit(
            "one PostgreSQL primary: storage",
            a.postgres_max_storage_bytes
            / (measured.postgres_table_bytes * DAY_S * a.postgres_history_days),
            f"{a.postgres_history_days:g} days of orders at {measured.postgres_table_bytes:,.0f} "
            f"bytes each fill {bytes_text(a.postgres_max_storage_bytes)}",
        ),
    ]
    return sorted(found, key=lambda limit: limit.orders_per_s)


def first_aggregate_limit(measured: Measured, assumptions: Assumptions) -> Limit:
    """Where the whole pipeline stops first (the per-customer limit aside: it caps one key)."""
    return next(
        limit
        for limit in limits(measured, assumptions)
        if not limit.resource.startswith("one customer")
    )


# --- text ------------------------------------------------------------------------------------


def bytes_text(count: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:,.1f} {unit}"
    return f"{count:,.0f} B"


def rows(plans: list[Plan], a: Assumptions) -> list[tuple[str, list[str]]]:
    retention_days = a.retention_s / DAY_S
    return [
        ("API processes (1 core each)", [f"{p.api_processes:,}" for p in plans]),
        ("workers", [f"{p.workers:,}" for p in plans]),
        ("partitions", [f"{p.partitions:,}" for p in plans]),
        (
            f"brokers ({a.broker_cores} cores; replication factor {a.replication_factor})",
            [f"{p.brokers:,} ({p.broker_cores:,.1f} cores needed)" for p in plans],
        ),
        ("PostgreSQL primary, cores needed", [f"{p.postgres_cores:,.2f}" for p in plans]),
        (
            "PostgreSQL writes: rows/s, WAL/s",
            [
                f"{p.postgres_rows_per_s:,.0f}, {bytes_text(p.postgres_wal_bytes_per_s)}"
                for p in plans
            ],
        ),
        ("PostgreSQL storage per day", [bytes_text(p.postgres_bytes_per_day) for p in plans]),
        (
            f"days to fill {bytes_text(a.postgres_max_storage_bytes)} of PostgreSQL",
            [f"{p.postgres_days_to_fill:,.0f}" for p in plans],
        ),
        ("HTTP in, per second", [bytes_text(p.http_bytes_per_s) for p in plans]),
        ("Kafka produce, per second", [bytes_text(p.kafka_produce_bytes_per_s) for p in plans]),
        (
            f"Kafka disk per day (x{a.replication_factor})",
            [bytes_text(p.kafka_disk_bytes_per_day) for p in plans],
        ),
        (
            f"Kafka disk at retention ({retention_days:g} days)",
            [bytes_text(p.kafka_disk_bytes_at_retention) for p in plans],
        ),
    ]


def assumptions_text(a: Assumptions) -> list[str]:
    return [
        f"every process at {a.utilisation:.0%} of its CPU at the peak (TARGET_UTILISATION)",
        f"replication factor {a.replication_factor}, each replica costing a broker what the "
        "leader's copy costs (REPLICATION_FACTOR)",
        f"at least {a.min_replicas} API processes and workers (MIN_REPLICAS)",
        f"partitions = {a.partition_headroom} x the workers, room to double before growing "
        "the topic (PARTITION_HEADROOM)",
        f"{a.broker_cores}-core brokers (BROKER_CORES); one PostgreSQL primary of at most "
        f"{a.postgres_max_cores} cores (POSTGRES_MAX_CORES) writing at most "
        f"{bytes_text(a.postgres_max_wal_bytes_per_s)}/s of WAL (POSTGRES_MAX_WAL_BYTES_PER_S) "
        f"and holding {a.postgres_history_days:g} days of orders in at most "
        f"{bytes_text(a.postgres_max_storage_bytes)} (POSTGRES_HISTORY_DAYS, "
        "POSTGRES_MAX_STORAGE_BYTES)",
        f"Kafka retention {a.retention_s / DAY_S:g} days (app/topics.py sets none: "
        "Kafka's default)",
        "orders are kept in PostgreSQL: its storage grows by the day's figure every day; "
        "a rate is taken as held all day (peak = average: an upper bound)",
    ]


def measured_text(m: Measured) -> list[str]:
    return [
        f"from {m.source}",
        f"CPU per order: API {m.api_us:,.0f} us ({m.per_api_core:,.0f} orders/s per core), "
        f"worker {m.worker_us:,.0f} us ({m.per_worker:,.0f} orders/s per worker and per "
        f"partition), broker {m.broker_us:,.0f} us, PostgreSQL {m.postgres_us:,.0f} us",
        f"bytes per order: HTTP request {m.http_request_bytes:,.0f}, Kafka record "
        f"{m.kafka_record_bytes:,.0f} ({m.kafka_log_bytes:,.0f} on disk, lz4 batches), "
        f"PostgreSQL table {m.postgres_table_bytes:,.0f} (rows and indexes), "
        f"WAL {m.postgres_wal_bytes:,.0f}",
    ]


def limits_text(m: Measured, a: Assumptions) -> list[str]:
    lines = []
    for limit in limits(m, a):
        at = "scales out" if math.isinf(limit.orders_per_s) else f"{limit.orders_per_s:,.0f}/s"
        lines.append(f"{limit.resource}: {at} ({limit.why})")
    return lines


NEXT_STEP = (
    "Where it stops: one PostgreSQL primary takes every order and keeps it. Its CPU and WAL "
    "last longest; its storage goes first (the table only grows). And the per-customer "
    "sequence (app/worker/order_store.py) numbers each batch's orders of a customer on from "
    "max(sequence) of that customer's stored rows, read through the unique index on "
    "(customer_id, sequence) inside the batch's transaction: a customer is written by one "
    "worker at a time (its partition's), all of its rows must live in one database, and that "
    "index, touched at random places, must stay in memory as it grows with every order ever "
    "stored. Next steps: keep each customer's last sequence in a row of its own (one per "
    "customer, updated by the batch), so that old orders can leave the table (time partitions, "
    "an archive); partition the orders table by hash of customer_id (smaller indexes and "
    "vacuums; still one primary's CPU and WAL); then shard by customer: several primaries, "
    "each owning a set of the topic's partitions (a customer's partition names its shard, so "
    "its sequence stays in one database), a worker group per shard, and GET /orders/{id} "
    "routed by the order's partition."
)


def text_report(m: Measured, a: Assumptions) -> str:
    plans = [plan(m, rate, a) for rate in RATES]
    table = rows(plans, a)
    width = max(len(name) for name, _ in table)
    columns = [
        max(len(f"{rate:,}/s"), *(len(v[i]) for _, v in table)) for i, rate in enumerate(RATES)
    ]
    head = " " * width + "".join(
        f"  {f'{r:,}/s':>{w}}" for r, w in zip(RATES, columns, strict=True)
    )
    lines = [head]
    for name, values in table:
        lines.append(
            f"{name:<{width}}"
            + "".join(f"  {v:>{w}}" for v, w in zip(values, columns, strict=True))
        )
    stop = first_aggregate_limit(m, a)
    return "\n".join(
        [
            "Capacity model (scripts/bench/capacity.py)",
            *(f"  measured: {line}" for line in measured_text(m)),
            "",
            *lines,
            "",
            "Assumptions:",
            *(f"  - {line}" for line in assumptions_text(a)),
            "Limits (at the target utilisation, lowest first):",
            *(f"  - {line}" for line in limits_text(m, a)),
            f"It stops scaling first at: {stop.resource}, {stop.orders_per_s:,.0f} orders/s.",
            NEXT_STEP,
        ]
    )


def markdown_report(m: Measured, a: Assumptions) -> str:
    plans = [plan(m, rate, a) for rate in RATES]
    lines = [
        "| | " + " | ".join(f"{rate:,} orders/s" for rate in RATES) + " |",
        "|---|" + "---|" * len(RATES),
        *(f"| {name} | " + " | ".join(values) + " |" for name, values in rows(plans, a)),
    ]
    stop = first_aggregate_limit(m, a)
    return "\n".join(
        [
            *lines,
            "",
            "Measured, " + measured_text(m)[0] + ":",
            "",
            *(f"- {line}" for line in measured_text(m)[1:]),
            "",
            "Assumptions (named constants in `scripts/bench/capacity.py`):",
            "",
            *(f"- {line}" for line in assumptions_text(a)),
            "",
            "Limits, at the target utilisation, lowest first:",
            "",
            *(f"- {line}" for line in limits_text(m, a)),
            "",
            f"It stops scaling first at: **{stop.resource}**, about "
            f"{stop.orders_per_s:,.0f} orders/s.",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--from", dest="source", type=Path, default=RESULTS)
    parser.add_argument("--markdown", action="store_true", help="the README's table")
    args = parser.parse_args()
    try:
        results = json.loads(args.source.read_text())
    except (OSError, ValueError) as exc:
        print(f"capacity: cannot read {args.source} ({exc}); run `make bench-e2e`", file=sys.stderr)
        return 1
    measured = measured_from(results)
    assumptions = Assumptions(retention_s=retention_s_of_topics())
    report = markdown_report if args.markdown else text_report
    print(report(measured, assumptions))
    return 0


if __name__ == "__main__":
    sys.exit(main())

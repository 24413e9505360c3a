#!/usr/bin/env python3
"""`make bench-worker`: how fast one worker drains the topic, against two references, and what
its Prometheus metrics cost.

In one run, on databases of its own (`orders_bench_<run>_<round>`, dropped when done):
1. fill a fresh topic with N orders (BENCH_ORDERS, default 200,000) for 1,000 customers;
2. the worker: one `orders worker` process drains it, in rounds that alternate METRICS_ENABLED
   true and false (on, off, off, on, ...: BENCH_METRICS_ROUNDS per setting, default 2), each
   round a fresh database and consumer group over the same records, with /metrics scraped every
   BENCH_SCRAPE_S (default 5) as Prometheus would; resident memory is sampled meanwhile;
3. the raw ceiling: asyncpg alone inserting the same rows, in transactions of the same size,
   with no Kafka at all;
4. a naive worker: one DB transaction and one Kafka commit per message (measured on the first
   BENCH_NAIVE_ORDERS records, default 5,000: at its pace all of them would take minutes).
Targets (issue 4): worker >= 50% of the raw ceiling and >= 20x the naive worker; RSS < 200 MB.
Target (issue 12): with metrics on, the drain rate within 5% of the rate with metrics off (the
median of the ratios within pairs of back-to-back rounds, one on and one off).
Prints one JSON line with every number, and exits 1 when a target is missed.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry

from app import contract
from app.db.migrate import upgrade_database
from app.db.positions import PartitionSpan
from app.settings import DatabaseSettings, get_settings
from app.topics import ensure_topics
from app.worker.batch_writer import BatchOutcome
from app.worker.metrics import WorkerMetrics
from app.worker.order_store import IncomingOrder
from app.worker.records import PreparedBatch

ROOT = Path(__file__).resolve().parents[2]
ORDERS_CMD = str(ROOT / ".venv" / "bin" / "orders")
TOTAL = int(os.environ.get("BENCH_ORDERS", "200000"))
NAIVE = int(os.environ.get("BENCH_NAIVE_ORDERS", "5000"))
METRICS_ROUNDS = int(os.environ.get("BENCH_METRICS_ROUNDS", "2"))
SCRAPE_S = float(os.environ.get("BENCH_SCRAPE_S", "5"))
CUSTOMERS = 1000


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def envelope(n: int, run: str) -> contract.OrderEnvelope:
    now = datetime.now(UTC)
    items = (
        contract.OrderLine(sku=f"sku-{n % 97}", quantity=1 + n % 5, unit_price=Decimal(n % 50)),
        contract.OrderLine(sku="gift-wrap", quantity=1, unit_price=Decimal("2.50")),
    )
    return contract.OrderEnvelope(
        order_id=uuid.uuid4(),
        customer_id=f"{run}-{n % CUSTOMERS}",
        items=items,
        total=contract.order_total(items),
        currency="EUR",
        accepted_at=now,
        accept_by=now + timedelta(hours=1),  # the whole run counts as on time
    )


async def fill_topic(bootstrap: str, topic: str, run: str) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=256 * 1024,
        compression_type="lz4",
    )
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for n in range(TOTAL):
            value, headers = contract.encode(envelope(n, run), "bench")
            pending.append(
                await producer.send(
                    topic, value, key=f"{run}-{n % CUSTOMERS}".encode(), headers=headers
                )
            )
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def prepare_database(url: str, owner_url: str, name: str) -> str:
    """A fresh database `name` on the configured server, created and migrated by the schema's
    owner; returns the application role's URL of it."""
    admin = await asyncpg.connect(plain(owner_url).rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    bench_url = url.rsplit("/", 1)[0] + f"/{name}"
    migration_url = owner_url.rsplit("/", 1)[0] + f"/{name}"
    await asyncio.to_thread(
        upgrade_database,
        DatabaseSettings(url=bench_url, migration_url=migration_url),  # type: ignore[arg-type]
    )
    return bench_url


async def drop_database(owner_url: str, name: str) -> None:
    admin = await asyncpg.connect(plain(owner_url).rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def stored_total(connection: asyncpg.Connection, group: str, topic: str) -> int:
    value = await connection.fetchval(
        "SELECT coalesce(sum(next_offset), 0) FROM consumer_positions"
        " WHERE group_id = $1 AND topic = $2",
        group,
        topic,
    )
    return int(value)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def scrape(client: httpx.AsyncClient, port: int) -> str:
    try:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    except httpx.TransportError:
        return ""  # not listening yet
    return response.text if response.status_code == 200 else ""


def sample_value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


async def run_worker(
    url: str, env: dict[str, str], group: str, topic: str, port: int
) -> dict[str, float]:
    """One `orders worker` process drains the topic; returns its rate and peak RSS (and, when
    its metrics are on, what they counted)."""
    connection = await asyncpg.connect(plain(url))
    scraper = httpx.AsyncClient(timeout=5)
    last_scrape = 0.0
    scraped = ""
    # A plain Popen: the worker runs on its own while this loop polls PostgreSQL.
    worker = subprocess.Popen(  # noqa: ASYNC220
        [ORDERS_CMD, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    process = psutil.Process(worker.pid)
    peak_rss = 0
    first_progress: float | None = None
    started = time.perf_counter()
    try:
        while True:
            done = await stored_total(connection, group, topic)
            peak_rss = max(peak_rss, process.memory_info().rss)
            if time.perf_counter() - last_scrape >= SCRAPE_S:
                last_scrape = time.perf_counter()
                scraped = await scrape(scraper, port)
            if done and first_progress is None:
                first_progress = time.perf_counter()
            if done >= TOTAL:
                break
            if time.perf_counter() - started > 600:
                raise SystemExit(f"the worker stored only {done} of {TOTAL} in 10 minutes")
            await asyncio.sleep(0.2)
        finished = time.perf_counter()
        cpu = process.cpu_times()
        scraped = await scrape(scraper, port)
    finally:
        worker.terminate()
        worker.wait(60)
        await connection.close()
        await scraper.aclose()
    assert first_progress is not None
    counted = {
        name: sample_value(scraped, name)
        for name in ("orders_stored_total", "orders_end_to_end_seconds_count")
    }
    return {
        **{f"counted_{name}": value for name, value in counted.items() if value is not None},
        "orders_per_s": round(TOTAL / (finished - first_progress), 1),
        "orders_per_s_including_start": round(TOTAL / (finished - started), 1),
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        # The steadiest figure on a shared machine: the worker's own CPU (start-up included).
        "cpu_us_per_order": round((cpu.user + cpu.system) / TOTAL * 1e6, 1),
    }


def metrics_cost_us_per_order(batch: int, rounds: int = 200) -> float:
    """The worker's metric calls for one batch of `batch` new orders (records fetched, the
    batch written with its end-to-end latencies, the Kafka commit), in this process: the
    steady figure beside the drains' rates, which a shared machine makes noisy."""
    run = "metrics-cost"
    orders = [
        IncomingOrder(
            envelope(n, run),
            n % 6,
            n,
            ConsumerRecord("t", n % 6, n, 0, 1, None, b"", None, 0, 0, ()),
        )
        for n in range(batch)
    ]
    spans = [PartitionSpan(p, 0, batch) for p in range(6)]
    outcome = BatchOutcome(
        written=PreparedBatch(orders=orders, poison=[], spans=spans),
        inserted=batch,
        stored=orders,
    )
    fetched = {
        TopicPartition("t", p): [o.record for o in orders if o.partition == p] for p in range(6)
    }
    metrics = WorkerMetrics("t", CollectorRegistry())
    started = time.perf_counter()
    for _ in range(rounds):
        metrics.fetched(fetched)
        metrics.batch_written(outcome, 0.01, datetime.now(UTC))
        metrics.kafka_commit(ok=True)
    return round((time.perf_counter() - started) / rounds / batch * 1e6, 3)


async def raw_ceiling(url: str, run: str, batch: int) -> float:
    """asyncpg alone: the same rows, in transactions of the worker's batch size, no Kafka."""
    rows = [envelope(n, f"{run}-raw") for n in range(TOTAL)]
    connection = await asyncpg.connect(plain(url))
    insert = """
        INSERT INTO orders (order_id, customer_id, sequence, items, total, currency, accepted_at,
                            kafka_partition, kafka_offset)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::jsonb[], $5::numeric[],
                             $6::text[], $7::timestamptz[], $8::int[], $9::bigint[])
    """
    started = time.perf_counter()
    try:
        for start in range(0, TOTAL, batch):
            chunk = rows[start : start + batch]
            async with connection.transaction():
                await connection.execute(
                    insert,
                    [e.order_id for e in chunk],
                    [e.customer_id for e in chunk],
                    [start + i + 1 for i in range(len(chunk))],  # unique per customer: n // 1000
                    [json.dumps([line.model_dump(mode="json") for line in e.items]) for e in chunk],
                    [e.total for e in chunk],
                    [e.currency for e in chunk],
                    [e.accepted_at for e in chunk],
                    [0] * len(chunk),
                    list(range(start, start + len(chunk))),
                )
    finally:
        await connection.close()
    return round(TOTAL / (time.perf_counter() - started), 1)


async def naive_worker(url: str, bootstrap: str, topic: str, group: str) -> float:
    """One transaction and one Kafka commit per message: the textbook way, measured."""
    connection = await asyncpg.connect(plain(url))
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    processed = 0
    started: float | None = None
    try:
        while processed < NAIVE:
            record = await consumer.getone()
            started = started or time.perf_counter()
            order = contract.decode(record.value)
            async with connection.transaction():
                await connection.execute(
                    "INSERT INTO orders (order_id, customer_id, sequence, items, total, currency,"
                    " accepted_at, kafka_partition, kafka_offset)"
                    " SELECT $1, $2::text, coalesce((SELECT max(sequence) FROM orders"
                    "  WHERE customer_id = $2::text), 0) + 1, $3::jsonb, $4, $5, $6, $7, $8"
                    " ON CONFLICT (order_id) DO NOTHING",
                    uuid.uuid4(),
                    f"naive-{order.customer_id}",
                    json.dumps([line.model_dump(mode="json") for line in order.items]),
                    order.total,
                    order.currency,
                    order.accepted_at,
                    record.partition,
                    record.offset,
                )
            tp = TopicPartition(record.topic, record.partition)
            await consumer.commit({tp: record.offset + 1})
            processed += 1
    finally:
        await consumer.stop()
        await connection.close()
    assert started is not None
    return round(processed / (time.perf_counter() - started), 1)


async def main() -> int:
    settings = get_settings()
    run = uuid.uuid4().hex[:6]
    topic, group = f"bench-worker-{run}", f"bench-workers-{run}"
    kafka = settings.kafka.model_copy(update={"orders_topic": topic, "dlq_topic": f"{topic}.DLQ"})
    await ensure_topics(kafka)
    fill_s = await fill_topic(kafka.bootstrap_servers, topic, run)
    drains: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    rounds: list[dict[str, float]] = []
    owner_url = str(settings.database.owner_url)
    database = ""
    for round_ in range(2 * METRICS_ROUNDS):
        metrics_on = round_ % 4 in (0, 3)  # on, off, off, on: a drift favours neither
        # A fresh database and group each round: every round stores the same records anew.
        if database:
            await drop_database(owner_url, database)
        database = f"orders_bench_{run}_{round_}"
        url = await prepare_database(str(settings.database.url), owner_url, database)
        round_group, port = f"{group}-{round_}", free_port()
        env = {
            **os.environ,
            "KAFKA_ORDERS_TOPIC": topic,
            "KAFKA_DLQ_TOPIC": f"{topic}.DLQ",
            "WORKER_GROUP_ID": round_group,
            "DATABASE_URL": url,
            "LOG_LEVEL": "WARNING",
            "METRICS_ENABLED": str(metrics_on).lower(),
            "WORKER_METRICS_PORT": str(port),
        }
        drain = await run_worker(url, env, round_group, topic, port)
        print(
            f"round {round_ + 1}: metrics {'on' if metrics_on else 'off'}: {drain}", file=sys.stderr
        )
        drains[metrics_on].append(drain)
        rounds.append(drain)
    on, off = drains[True], drains[False]
    # Rounds 1+2, 3+4, ... each pair one round on and one off, run back to back: the ratio
    # within a pair is free of the drift between pairs (a cold first round, a busy neighbour).
    pairs = [
        (rounds[i], rounds[i + 1]) if i % 4 == 0 else (rounds[i + 1], rounds[i])
        for i in range(0, len(rounds) - 1, 2)
    ]
    paired_rate = statistics.median(a["orders_per_s"] / b["orders_per_s"] for a, b in pairs)
    paired_cpu = statistics.median(a["cpu_us_per_order"] / b["cpu_us_per_order"] for a, b in pairs)
    worker = _median_of(on + off)
    try:
        ceiling = await raw_ceiling(url, run, settings.worker.max_records)
        naive = await naive_worker(url, kafka.bootstrap_servers, topic, f"naive-{run}")
    finally:
        await drop_database(owner_url, database)
    on_rate, off_rate = _median(on, "orders_per_s"), _median(off, "orders_per_s")
    metrics_counted = all(
        d.get("counted_orders_stored_total") == TOTAL
        and d.get("counted_orders_end_to_end_seconds_count") == TOTAL
        for d in on
    )
    result = {
        "orders": TOTAL,
        "metrics_rounds_per_setting": METRICS_ROUNDS,
        "metrics_on_orders_per_s": on_rate,
        "metrics_off_orders_per_s": off_rate,
        "metrics_on_vs_off_rate": round(on_rate / off_rate, 3),
        "metrics_on_cpu_us_per_order": _median(on, "cpu_us_per_order"),
        "metrics_off_cpu_us_per_order": _median(off, "cpu_us_per_order"),
        "metrics_on_vs_off_rate_paired": round(paired_rate, 3),
        "metrics_on_vs_off_cpu_paired": round(paired_cpu, 3),
        "metrics_on_counted_every_order": metrics_counted,
        "metrics_calls_us_per_order": metrics_cost_us_per_order(settings.worker.max_records),
        "fill_orders_per_s": round(TOTAL / fill_s, 1),
        "batch_size": settings.worker.max_records,
        "worker_orders_per_s": worker["orders_per_s"],
        "worker_orders_per_s_including_start": worker["orders_per_s_including_start"],
        "worker_peak_rss_mb": worker["peak_rss_mb"],
        "worker_cpu_us_per_order": worker["cpu_us_per_order"],
        "raw_asyncpg_rows_per_s": ceiling,
        "naive_orders_per_s": naive,
        "worker_vs_raw": round(worker["orders_per_s"] / ceiling, 3),
        "worker_vs_naive": round(worker["orders_per_s"] / naive, 1),
    }
    print(json.dumps(result))
    met = (
        result["worker_vs_raw"] >= 0.5
        and result["worker_vs_naive"] >= 20
        and worker["peak_rss_mb"] < 200
        and paired_rate >= 0.95
        and metrics_counted
    )
    print("targets met" if met else "TARGETS MISSED", file=sys.stderr)
    return 0 if met else 1


def _median(drains: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(d[key] for d in drains), 1)


def _median_of(drains: list[dict[str, float]]) -> dict[str, float]:
    """Every round's figures, each the median over the rounds (peak RSS: the highest)."""
    keys = ("orders_per_s", "orders_per_s_including_start", "cpu_us_per_order")
    found = {key: _median(drains, key) for key in keys}
    found["peak_rss_mb"] = max(d["peak_rss_mb"] for d in drains)
    return found


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

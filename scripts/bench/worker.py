#!/usr/bin/env python3
"""`make bench-worker`: how fast one worker drains the topic, against two references.

In one run, on a database of its own (`orders_bench`):
1. fill a fresh topic with N orders (BENCH_ORDERS, default 200,000) for 1,000 customers;
2. the worker: one `orders worker` process drains it; its resident memory is sampled meanwhile;
3. the raw ceiling: asyncpg alone inserting the same rows, in transactions of the same size,
   with no Kafka at all;
4. a naive worker: one DB transaction and one Kafka commit per message (measured on the first
   BENCH_NAIVE_ORDERS records, default 5,000: at its pace all of them would take minutes).
Targets (issue 4): worker >= 50% of the raw ceiling and >= 20x the naive worker; RSS < 200 MB.
Prints one JSON line with every number, and exits 1 when a target is missed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from app import contract
from app.db.migrate import upgrade_database
from app.settings import DatabaseSettings, get_settings
from app.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[2]
ORDERS_CMD = str(ROOT / ".venv" / "bin" / "orders")
TOTAL = int(os.environ.get("BENCH_ORDERS", "200000"))
NAIVE = int(os.environ.get("BENCH_NAIVE_ORDERS", "5000"))
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


async def prepare_database(url: str, owner_url: str) -> str:
    """A fresh `orders_bench` database on the configured server, created and migrated by the
    schema's owner; returns the application role's URL of it."""
    admin = await asyncpg.connect(plain(owner_url).rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute("DROP DATABASE IF EXISTS orders_bench WITH (FORCE)")
        await admin.execute("CREATE DATABASE orders_bench")
    finally:
        await admin.close()
    bench_url = url.rsplit("/", 1)[0] + "/orders_bench"
    migration_url = owner_url.rsplit("/", 1)[0] + "/orders_bench"
    await asyncio.to_thread(
        upgrade_database,
        DatabaseSettings(url=bench_url, migration_url=migration_url),  # type: ignore[arg-type]
    )
    return bench_url


async def stored_total(connection: asyncpg.Connection, group: str, topic: str) -> int:
    value = await connection.fetchval(
        "SELECT coalesce(sum(next_offset), 0) FROM consumer_positions"
        " WHERE group_id = $1 AND topic = $2",
        group,
        topic,
    )
    return int(value)


async def run_worker(url: str, env: dict[str, str], group: str, topic: str) -> dict[str, float]:
    """One `orders worker` process drains the topic; returns its rate and peak RSS."""
    connection = await asyncpg.connect(plain(url))
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
            if done and first_progress is None:
                first_progress = time.perf_counter()
            if done >= TOTAL:
                break
            if time.perf_counter() - started > 600:
                raise SystemExit(f"the worker stored only {done} of {TOTAL} in 10 minutes")
            await asyncio.sleep(0.2)
        finished = time.perf_counter()
        cpu = process.cpu_times()
    finally:
        worker.terminate()
        worker.wait(60)
        await connection.close()
    assert first_progress is not None
    return {
        "orders_per_s": round(TOTAL / (finished - first_progress), 1),
        "orders_per_s_including_start": round(TOTAL / (finished - started), 1),
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        # The steadiest figure on a shared machine: the worker's own CPU (start-up included).
        "cpu_us_per_order": round((cpu.user + cpu.system) / TOTAL * 1e6, 1),
    }


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
    url = await prepare_database(str(settings.database.url), str(settings.database.owner_url))
    fill_s = await fill_topic(kafka.bootstrap_servers, topic, run)
    env = {
        **os.environ,
        "KAFKA_ORDERS_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": f"{topic}.DLQ",
        "WORKER_GROUP_ID": group,
        "DATABASE_URL": url,
        "LOG_LEVEL": "WARNING",
    }
    worker = await run_worker(url, env, group, topic)
    ceiling = await raw_ceiling(url, run, settings.worker.max_records)
    naive = await naive_worker(url, kafka.bootstrap_servers, topic, f"naive-{run}")
    result = {
        "orders": TOTAL,
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
    )
    print("targets met" if met else "TARGETS MISSED", file=sys.stderr)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

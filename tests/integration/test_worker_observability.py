"""The worker's /metrics, /healthz and /readyz against the real services: the counters match the
ledger, the end-to-end histogram counts each order once (redeliveries too), lag drains to 0, and a
partition blocked on purpose (a fault point) is reported STALLED, fails /readyz, then clears."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.batching import partition_for
from app.db.tables import orders
from app.settings import Settings
from app.topics import ensure_topics
from tests.integration.api_client import api_client
from tests.integration.conftest import make_settings
from tests.integration.endpoints import Endpoints
from tests.integration.kafka_tools import end_offsets
from tests.integration.load import customers_for, orders_accepted, place_orders
from tests.integration.oracle import Expectations, check_ledger, wait_until_stored
from tests.integration.processes import ORDERS, OrdersProcess, settings_env

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
POISON = [b"not json at all", b'{"schema_version": 1}', b'{"schema_version": 99}']


async def scrape(port: int) -> Samples:
    """Every sample a worker's /metrics shows: (name, sorted labels) -> value."""
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    response.raise_for_status()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def total(scrapes: list[Samples], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return sum(samples.get(key, 0.0) for samples in scrapes)


def by_partition(scrapes: list[Samples], name: str) -> dict[int, list[float]]:
    """Each partition's values of a per-partition gauge, one per worker that reports it."""
    found: dict[int, list[float]] = {}
    for samples in scrapes:
        for (sample, labels), value in samples.items():
            if sample == name:
                found.setdefault(int(dict(labels)["partition"]), []).append(value)
    return found


async def status(port: int, path: str) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(f"http://127.0.0.1:{port}{path}")).status_code


async def ready(port: int) -> bool:
    return await status(port, "/readyz") == 200


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> bool:
    """Poll an async predicate until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            if await check():
                return True
        except httpx.TransportError:
            pass  # the server is not up yet
        await asyncio.sleep(0.25)
    return False


async def dead_letters(settings: Settings) -> int:
    ends = await end_offsets(settings.kafka.bootstrap_servers, settings.kafka.dlq_topic)
    return sum(ends.values())


async def dead_letters_are(settings: Settings, count: int) -> bool:
    return await dead_letters(settings) == count


async def stored(engine: AsyncEngine, customers: list[str]) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            select(func.count()).select_from(orders).where(orders.c.customer_id.in_(customers))
        )
    return int(count or 0)


async def produce_poison(settings: Settings, key: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        for value in POISON:
            await producer.send_and_wait(settings.kafka.orders_topic, value, key=key)
    finally:
        await producer.stop()


@asynccontextmanager
async def workers(
    settings: Settings, log_dir: Path, count: int, **env: str
) -> AsyncIterator[list[OrdersProcess]]:
    group = [OrdersProcess("worker", settings, log_dir, **env) for _ in range(count)]
    try:
        yield group
    finally:
        codes = [worker.stop() for worker in group]
        assert codes == [0] * count, [w.output()[-3000:] for w in group]


async def test_worker_counters_match_the_ledger_across_a_redelivery_and_lag_drains(
    settings: Settings, engine: AsyncEngine, run_id: str, tmp_path: Path
) -> None:
    customers = customers_for(run_id, 20)
    async with workers(settings, tmp_path, 2, WORKER_LAG_INTERVAL_S="0.5") as group:
        expected = await orders_accepted(settings, customers, per_customer=10)
        await produce_poison(settings, customers[0].encode())
        assert await wait_until_stored(engine, expected) == expected.total == 200
        assert await until(lambda: dead_letters_are(settings, 3))
        ports = [worker.metrics_port for worker in group]

        async def settled() -> bool:
            scrapes = [await scrape(port) for port in ports]
            lags = by_partition(scrapes, "orders_consumer_lag_records")
            return (
                total(scrapes, "orders_stored_total") == 200
                and total(scrapes, "orders_dead_lettered_total") == 3
                # Both members joined (the second may join after the first drained it all).
                and all(total([s], "orders_worker_ready") == 1 for s in scrapes)
                and all(total([s], "orders_worker_assigned_partitions") > 0 for s in scrapes)
                # Each partition reported by exactly one member, every one drained.
                and sorted(lags) == list(range(settings.kafka.partitions))
                and all(values == [0.0] for values in lags.values())
            )

        assert await until(settled), [w.output()[-3000:] for w in group]
        scrapes = [await scrape(port) for port in ports]
        assert total(scrapes, "orders_end_to_end_seconds_count") == 200
        assert total(scrapes, "orders_duplicates_absorbed_total") == 0
        assert total(scrapes, "orders_worker_assigned_partitions") == settings.kafka.partitions
        assert total(scrapes, "orders_kafka_commits_total") > 0
        assert total(scrapes, "orders_worker_rebalances_total", event="assigned") >= 2
        fetched = sum(
            total(scrapes, "orders_worker_records_fetched_total", topic=t, partition=str(p))
            for t in [settings.kafka.orders_topic]
            for p in range(settings.kafka.partitions)
        )
        assert fetched >= 203
        assert [await status(port, "/readyz") for port in ports] == [200, 200]
        assert [await status(port, "/healthz") for port in ports] == [200, 200]

        # Every position back to 0 (as a careless reset would), then one more order per
        # customer: each member's next batch is fenced, sought back, and redelivers all.
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE consumer_positions SET next_offset = 0 WHERE group_id = :g"),
                {"g": settings.worker.group_id},
            )
        more = Expectations()
        async with api_client(settings) as client:
            # No Idempotency-Key: the keys of the first orders would answer with those.
            await place_orders(client, more, customers, per_customer=1, keyed=False)
        for customer, ids in more.accepted.items():
            for order_id in ids:
                expected.accept(customer, order_id)
        assert await wait_until_stored(engine, expected) == 220

        async def redelivered() -> bool:
            scrapes = [await scrape(port) for port in ports]
            lags = by_partition(scrapes, "orders_consumer_lag_records")
            return total(scrapes, "orders_duplicates_absorbed_total") == 200 and all(
                values == [0.0] for values in lags.values()
            )

        assert await until(redelivered), [w.output()[-3000:] for w in group]
        scrapes = [await scrape(port) for port in ports]
        assert total(scrapes, "orders_stored_total") == await stored(engine, customers) == 220
        assert total(scrapes, "orders_end_to_end_seconds_count") == 220  # not 420
        assert total(scrapes, "orders_fenced_total") > 0
        # The poison was redelivered too, and dead-lettered again (at least once, by design).
        assert total(scrapes, "orders_dead_lettered_total") == await dead_letters(settings) == 6
    assert (await check_ledger(engine, expected)).holds


async def test_a_blocked_partition_is_stalled_fails_readiness_and_clears_once_unblocked(
    endpoints: Endpoints, database_url: str, engine: AsyncEngine, run_id: str, tmp_path: Path
) -> None:
    settings = make_settings(
        endpoints, database_url, stall_after_s=2, lag_interval_s=0.5, unready_after_stall_s=1
    )
    await ensure_topics(settings.kafka)
    customers = customers_for(run_id, 24)
    partitions = settings.kafka.partitions
    blocked = partition_for(customers[0].encode(), partitions)
    assert {partition_for(c.encode(), partitions) for c in customers} - {blocked}
    block_file = tmp_path / "block"
    fault = {
        "ORDERS_FAULT_BLOCK_PARTITION": str(blocked),
        "ORDERS_FAULT_BLOCK_FILE": str(block_file),
    }
    expected = Expectations()
    async with workers(settings, tmp_path, 1, **fault) as (worker,), api_client(settings) as api:
        port = worker.metrics_port
        assert await until(lambda: ready(port)), worker.output()
        # First every partition flows, so that the member has stored a position on each.
        await place_orders(api, expected, customers, per_customer=1, keyed=False)
        assert await wait_until_stored(engine, expected) == expected.total
        block_file.touch()

        trickling = asyncio.create_task(_trickle(api, expected, customers))
        try:

            async def stalled() -> bool:
                samples = await scrape(port)
                flags = by_partition([samples], "orders_partition_stalled")
                return flags.get(blocked) == [1.0] and await status(port, "/readyz") == 503

            assert await until(stalled), worker.output()[-3000:]
            samples = await scrape(port)
            flags = by_partition([samples], "orders_partition_stalled")
            assert all(flags[p] == [0.0] for p in flags if p != blocked), flags
            assert by_partition([samples], "orders_consumer_lag_records")[blocked][0] > 0
            assert total([samples], "orders_worker_ready") == 0
            assert (await status(port, "/healthz")) == 200
            await _lag_says_stalled(settings, blocked)
        finally:
            block_file.unlink()

        async def cleared() -> bool:
            samples = await scrape(port)
            return by_partition([samples], "orders_partition_stalled")[blocked] == [0.0] and (
                await status(port, "/readyz") == 200
            )

        assert await until(cleared), worker.output()[-3000:]
        trickling.cancel()
        await asyncio.gather(trickling, return_exceptions=True)

        async def drained() -> bool:
            lags = by_partition([await scrape(port)], "orders_consumer_lag_records")
            return bool(lags) and all(values == [0.0] for values in lags.values())

        assert await until(drained), worker.output()[-3000:]
        assert await wait_until_stored(engine, expected) == expected.total
        worker.signal(signal.SIGTERM)
        assert worker.wait(40) == 0
    log = worker.output()
    assert log.count(f"partition {blocked} STALLED") == 1, log[-5000:]
    line = next(line for line in log.splitlines() if f"partition {blocked} STALLED" in line)
    assert " WARNING " in line
    assert "cause: blocked by fault point" in line
    assert f"partition {blocked} OK again (was STALLED)" in log
    assert (await check_ledger(engine, expected)).holds


async def _trickle(client: httpx.AsyncClient, expected: Expectations, customers: list[str]) -> None:
    """An order per customer every 0.3 s: the other partitions keep moving (so the member is
    plainly alive: STALLED, not STOPPED) and the blocked one's lag grows."""
    while True:
        await place_orders(client, expected, customers, per_customer=1, keyed=False)
        await asyncio.sleep(0.3)


async def _lag_says_stalled(settings: Settings, blocked: int) -> None:
    """`orders lag --json` (the operator's view, computed apart from the worker) agrees."""
    env = settings_env(settings)
    shown = await asyncio.to_thread(
        subprocess.run,
        [ORDERS, "lag", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 3, shown.stderr + shown.stdout  # 3: a partition stalled
    rows = json.loads(shown.stdout)
    statuses = {row["partition"]: row["status"] for row in rows}
    assert statuses[blocked] == "STALLED", shown.stdout


async def test_metrics_off_serves_health_and_readiness_but_no_metrics(
    settings: Settings, tmp_path: Path
) -> None:
    async with workers(settings, tmp_path, 1, METRICS_ENABLED="false") as (worker,):
        port = worker.metrics_port
        assert await until(lambda: ready(port)), worker.output()
        assert await status(port, "/metrics") == 404
        assert await status(port, "/healthz") == 200


async def test_a_metrics_port_in_use_fails_the_start_loudly(
    settings: Settings, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = OrdersProcess("worker", settings, tmp_path, WORKER_METRICS_PORT=str(port))
        code = worker.wait(30)
    assert code != 0
    assert f"cannot listen on 127.0.0.1:{port}" in worker.output()
    assert "WORKER_METRICS_PORT" in worker.output()

"""Stress: offset gaps, poison and rebalances at once, on worker processes, under load.

Written before the worker learned to pass offset gaps (an earlier attempt lost an order under a
stress run like this one), and kept. While a plain producer, a transactional producer (commits
and aborts) and a poison producer write to the topic, workers join, leave gracefully and are
killed. Then the oracle: every plain and committed order stored exactly once and in order, no
aborted order stored, the poison (and only the poison) dead-lettered, every position at the log's
end, and no position ever moved backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.topics import ensure_topics
from tests.integration.chaos import WorkerPool, watching_positions
from tests.integration.conftest import make_settings
from tests.integration.direct import DirectOrder, direct_order, started_producer, valid_order
from tests.integration.endpoints import Endpoints
from tests.integration.kafka_tools import end_offsets, non_empty, read_topic
from tests.integration.oracle import Expectations, check_ledger, stored_positions, wait_until_stored

FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


@dataclass(frozen=True)
class Load:
    plain_customers: int
    plain_each: int
    tx_customers: int
    transactions: int
    poison_every: int


QUICK = Load(plain_customers=40, plain_each=60, tx_customers=6, transactions=60, poison_every=250)
LONG = Load(
    plain_customers=100, plain_each=120, tx_customers=10, transactions=200, poison_every=500
)


async def produce_plain(
    settings_bootstrap: str, topic: str, run_id: str, load: Load, expected: Expectations
) -> list[bytes]:
    """Plain orders (an idempotent producer keeps each customer's order), with poison mixed in."""
    producer = await started_producer(settings_bootstrap)
    poison: list[bytes] = []
    try:
        sent = 0
        for n in range(load.plain_each):
            for c in range(load.plain_customers):
                order = valid_order(f"{run_id}-p{c}", n)
                await producer.send(topic, order.value, key=order.customer_id.encode())
                expected.accept(order.customer_id, order.order_id)
                sent += 1
                if sent % load.poison_every == 0:
                    bad = direct_order(f"{run_id}-p{c}", n, sku="nul\u0000here").value
                    await producer.send(topic, bad, key=order.customer_id.encode())
                    poison.append(bad)
            await asyncio.sleep(0.12)  # spread the load over the churn (about 10 s)
        await producer.flush()
    finally:
        await producer.stop()
    return poison


async def produce_transactions(
    bootstrap: str, topic: str, run_id: str, load: Load, expected: Expectations
) -> list[DirectOrder]:
    """Transactions of 1-4 orders each, one in three aborted; returns the aborted orders."""
    producer = await started_producer(bootstrap, transactional_id=f"stress-{run_id}")
    aborted: list[DirectOrder] = []
    rng = random.Random(run_id)
    try:
        for t in range(load.transactions):
            customer = f"{run_id}-t{t % load.tx_customers}"
            batch = [valid_order(customer, t * 10 + n) for n in range(rng.randint(1, 4))]
            await producer.begin_transaction()
            for order in batch:
                await producer.send(topic, order.value, key=customer.encode())
            if t % 3 == 2:
                await producer.abort_transaction()
                aborted += batch
            else:
                await producer.commit_transaction()
                for order in batch:
                    expected.accept(customer, order.order_id)
            await asyncio.sleep(0.1)
    finally:
        await producer.stop()
    return aborted


@contextlib.contextmanager
def cpu_burner(enabled: bool) -> Iterator[None]:
    """A busy process competing for the two cores, as on a loaded machine."""
    if not enabled:
        yield
        return
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only spins
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            pass
        os._exit(0)
    try:
        yield
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


async def churn(pool: WorkerPool) -> None:
    """Workers join, leave gracefully and die, while the load runs."""
    pool.start(1)
    await asyncio.sleep(2)
    pool.start(1)
    await asyncio.sleep(2)
    pool.start(1)
    await asyncio.sleep(2)
    await asyncio.to_thread(pool.stop, 1)
    await asyncio.sleep(2)
    pool.kill_one()
    await asyncio.sleep(1)
    pool.start(1)


async def run_stress(
    load: Load,
    endpoints: Endpoints,
    database_url: str,
    engine: AsyncEngine,
    run_id: str,
    tmp_path: Path,
    burn: bool,
) -> None:
    settings = make_settings(endpoints, database_url, **FAST_GROUP)
    await ensure_topics(settings.kafka)
    bootstrap, topic = settings.kafka.bootstrap_servers, settings.kafka.orders_topic
    pool = WorkerPool(settings, tmp_path)
    expected = Expectations()
    try:
        with cpu_burner(burn):
            async with watching_positions(engine, settings) as watch:
                poison, aborted, _ = await asyncio.gather(
                    produce_plain(bootstrap, topic, run_id, load, expected),
                    produce_transactions(bootstrap, topic, run_id, load, expected),
                    churn(pool),
                )
                stored = await wait_until_stored(engine, expected, timeout=240)
                assert stored == expected.total, pool.outputs()[-5000:]
                ends = non_empty(await end_offsets(bootstrap, topic))
                for _ in range(150):
                    if await stored_positions(engine, settings.worker.group_id, topic) == ends:
                        break
                    await asyncio.sleep(0.2)
                assert await stored_positions(engine, settings.worker.group_id, topic) == ends
        report = await check_ledger(engine, expected)
        print(
            f"\nSTRESS gaps+poison+churn: orders={expected.total} aborted={len(aborted)} "
            f"poison={len(poison)} oracle: {report} regressions={len(watch.regressions)}"
        )
        assert report.holds, str(report)
        assert watch.regressions == []
        dead = await read_topic(bootstrap, settings.kafka.dlq_topic)
        # At least once: a worker killed between the DLQ's ack and its COMMIT sends it again.
        assert {record.value for record in dead} == set(poison)
    finally:
        await asyncio.to_thread(pool.stop_all)


@pytest.mark.timeout(600)
async def test_gaps_poison_and_churn_under_load(
    endpoints: Endpoints, database_url: str, engine: AsyncEngine, run_id: str, tmp_path: Path
) -> None:
    await run_stress(QUICK, endpoints, database_url, engine, run_id, tmp_path, burn=False)


@pytest.mark.chaos
@pytest.mark.timeout(900)
async def test_gaps_poison_and_churn_under_load_with_a_cpu_burner(
    endpoints: Endpoints, database_url: str, engine: AsyncEngine, run_id: str, tmp_path: Path
) -> None:
    await run_stress(LONG, endpoints, database_url, engine, run_id, tmp_path, burn=True)

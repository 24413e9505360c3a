"""`orders payments` end to end: real broker, real PostgreSQL, real `orders gateway` processes.

The exactly-once ledger under a kill -9 loop of two members, through a gateway that fails 20%
of calls and leaves 5% unanswered after charging: every order charged once, in each customer's
order; one `payments` event per order visible to a read_committed reader that steps over the
transaction markers by the pipeline's span rule (app.worker.fetch_positions); an audit trail
that accounts for every gateway call.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import contract
from app.payments.events import PaymentEvent
from app.settings import PaymentsSettings, Settings
from app.topics import ensure_topics
from app.worker.fetch_positions import FetchPositions
from tests.integration.conftest import make_settings
from tests.integration.direct import payable_order
from tests.integration.endpoints import Endpoints
from tests.integration.kafka_tools import end_offsets
from tests.integration.processes import GatewayProcess, OrdersProcess


def gateway_process(
    log_dir: Path, *, latency_ms: float = 20, error_rate: float = 0.0, timeout_rate: float = 0.0
) -> GatewayProcess:
    """`orders gateway` on a free port; an injected timeout answers after 5 s (the members'
    PAYMENTS_GATEWAY_TIMEOUT_S is 0.5 s: they retry, with the same charge key)."""
    return GatewayProcess(
        log_dir, latency_ms=latency_ms, error_rate=error_rate, timeout_rate=timeout_rate
    )


def payments_settings(endpoints: Endpoints, database_url: str, gateway_url: str) -> Settings:
    """A scenario's own orders topic, payments topic and groups; short session timeouts so a
    killed or paused member's partitions move within seconds."""
    base = make_settings(
        endpoints,
        database_url,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        rebalance_timeout_ms=60000,
        max_poll_interval_ms=60000,
    )
    run = base.kafka.orders_topic.removeprefix("orders-")
    payments = PaymentsSettings(
        group_id=f"order-payments-{run}",
        topic=f"payments-{run}",
        gateway_url=gateway_url,
        gateway_timeout_s=0.5,
        max_in_flight=64,
        retry_backoff_initial_s=0.02,
        retry_backoff_max_s=0.5,
        revoke_grace_s=2.0,
        transaction_timeout_s=8.0,
    )
    return base.model_copy(update={"payments": payments})


async def place_orders(
    settings: Settings, count: int, customers: int
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """`count` orders of `customers` customers and a poison record; returns each customer's
    order ids in offset order, and each order's request id."""
    run = settings.kafka.orders_topic
    per_customer: dict[str, list[str]] = {}
    request_ids: dict[str, str] = {}
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers, enable_idempotence=True
    )
    await producer.start()
    try:
        sent = []
        for n in range(count):
            order = payable_order(f"{run}-c{n % customers}")
            request_id = f"req-{run}-{n}"
            value, headers = contract.encode(order, request_id)
            per_customer.setdefault(order.customer_id, []).append(str(order.order_id))
            request_ids[str(order.order_id)] = request_id
            sent.append(
                await producer.send(
                    settings.kafka.orders_topic, value, key=order.key, headers=headers
                )
            )
        sent.append(await producer.send(settings.kafka.orders_topic, b"not an order", key=b"x"))
        async with asyncio.timeout(30):
            await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return per_customer, request_ids


async def read_committed_events(bootstrap: str, topic: str) -> list[PaymentEvent]:
    """Every event a read_committed reader sees, read to the last stable offset by the span
    rule: a partition is done when the consumer's position (not its last record's offset + 1,
    which a trailing commit marker never reaches) is at the end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    events: list[PaymentEvent] = []
    try:
        partitions = [TopicPartition(topic, p) for p in await end_offsets(bootstrap, topic)]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)  # read_committed: last stable offsets
        positions = FetchPositions(consumer)
        await consumer.seek_to_beginning(*partitions)
        reached = {tp: 0 for tp in partitions}
        async with asyncio.timeout(60):
            while any(reached[tp] < ends[tp] for tp in partitions):
                batch, bounds = await positions.getmany(timeout_ms=500, max_records=1000)
                for records in batch.values():
                    events.extend(PaymentEvent.model_validate_json(r.value) for r in records)
                for tp, (_, end) in bounds.items():
                    if end is not None:
                        reached[tp] = end
    finally:
        await consumer.stop()
    return events


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


async def wait_until_all_committed(settings: Settings, timeout_s: float) -> None:
    kafka = settings.kafka
    ends = {
        p: e
        for p, e in (await end_offsets(kafka.bootstrap_servers, kafka.orders_topic)).items()
        if e
    }
    async with asyncio.timeout(timeout_s):
        while True:
            group = settings.payments.group_id
            if await committed_offsets(kafka.bootstrap_servers, group, kafka.orders_topic) == ends:
                return
            await asyncio.sleep(0.5)


def gateway_books(url: str, per_customer: dict[str, list[str]]) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{url}/stats", timeout=10).json()
    stats["customers_out_of_order"] = sum(
        httpx.get(f"{url}/customers/{customer}/charges", timeout=10).json()["order_ids"] != expected
        for customer, expected in per_customer.items()
    )
    return stats


async def audit_of(engine: AsyncEngine, order_ids: list[str]) -> dict[str, Counter[str]]:
    """Per order: how many audit rows of each outcome."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT order_id::text, outcome, count(*) FROM payment_attempts"
                " WHERE order_id = ANY(CAST(:ids AS uuid[])) GROUP BY 1, 2"
            ),
            {"ids": order_ids},
        )
        audit: dict[str, Counter[str]] = {}
        for order_id, outcome, count in rows:
            audit.setdefault(order_id, Counter())[outcome] = count
    return audit


async def request_ids_in_audit(engine: AsyncEngine, order_ids: list[str]) -> dict[str, set[str]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT order_id::text, request_id FROM payment_attempts"
                " WHERE order_id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": order_ids},
        )
        found: dict[str, set[str]] = {}
        for order_id, request_id in rows:
            found.setdefault(order_id, set()).add(request_id)
    return found


async def kill_loop(
    settings: Settings,
    log_dir: Path,
    members: list[OrdersProcess],
    seconds: float,
    rng: random.Random,
) -> int:
    """kill -9 a random member every 2-4 s and start a fresh one in its place; returns kills."""
    kills = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(rng.uniform(2, 4))
        victim = rng.randrange(len(members))
        members[victim].kill()
        kills += 1
        members[victim] = OrdersProcess("payments", settings, log_dir)
    return kills


async def check_exactly_once(
    settings: Settings,
    engine: AsyncEngine,
    gateway_url: str,
    per_customer: dict[str, list[str]],
    request_ids: dict[str, str],
) -> dict[str, Any]:
    """The ledger: asserted here, returned for the report."""
    orders = [order for ids in per_customer.values() for order in ids]
    books = gateway_books(gateway_url, per_customer)
    assert books["orders_charged"] == len(orders), books
    assert books["charges"] == len(orders), books
    assert books["orders_charged_more_than_once"] == 0, books
    assert books["conflicts"] == 0, books
    assert books["customers_out_of_order"] == 0, books

    events = await read_committed_events(settings.kafka.bootstrap_servers, settings.payments.topic)
    per_order = Counter(str(event.order_id) for event in events)
    assert set(per_order) == set(orders)
    assert max(per_order.values()) == 1, per_order.most_common(3)
    assert all(event.status == "charged" for event in events)
    sources = Counter((event.source_partition, event.source_offset) for event in events)
    assert max(sources.values()) == 1
    assert {str(e.order_id): e.request_id for e in events} == request_ids

    audit = await audit_of(engine, orders)
    assert set(audit) == set(orders)
    started = sum(outcomes["started"] for outcomes in audit.values())
    # Every call the gateway saw had its `started` row committed first.
    assert books["calls"] <= started, (books["calls"], started)
    for order, outcomes in audit.items():
        assert outcomes["charged"] + outcomes["replayed"] >= 1, (order, outcomes)
        finished = sum(n for outcome, n in outcomes.items() if outcome != "started")
        assert finished <= outcomes["started"], (order, outcomes)
    carried = await request_ids_in_audit(engine, orders)
    assert all(carried[order] == {request_ids[order]} for order in orders)
    return {"books": books, "events": len(events), "audit_started": started}


async def ledger_under_a_kill_loop(
    endpoints: Endpoints,
    database_url: str,
    engine: AsyncEngine,
    tmp_path: Path,
    *,
    latency_ms: int,
    orders: int,
    customers: int,
    loop_s: float,
    seed: int,
    drain_s: float,
) -> tuple[int, dict[str, Any]]:
    """Two `orders payments` members killed -9 in turn for `loop_s` through a gateway failing
    20% of calls and leaving 5% unanswered after charging; then drained, stopped, and checked
    (check_exactly_once). The kills and the check's result."""
    with gateway_process(tmp_path, latency_ms=latency_ms, error_rate=0.2, timeout_rate=0.05) as url:
        settings = payments_settings(endpoints, database_url, url)
        await ensure_topics(settings.kafka, settings.payments.topic)
        per_customer, request_ids = await place_orders(settings, count=orders, customers=customers)
        members = [OrdersProcess("payments", settings, tmp_path) for _ in range(2)]
        try:
            kills = await kill_loop(settings, tmp_path, members, loop_s, random.Random(seed))
            await wait_until_all_committed(settings, timeout_s=drain_s)
            for member in members:
                # The loop's last replacement may still be importing: a SIGTERM before its
                # handlers are in place ends it with -15, not the graceful path tested here.
                assert member.wait_for_output("started", 60), member.output()[-3000:]
                assert member.stop() == 0, member.output()[-3000:]
        finally:
            for member in members:
                if member.alive():
                    member.kill()
        return kills, await check_exactly_once(settings, engine, url, per_customer, request_ids)


async def test_exactly_once_ledger_under_a_kill_9_loop_through_a_flaky_gateway(
    endpoints: Endpoints, database_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    kills, result = await ledger_under_a_kill_loop(
        endpoints,
        database_url,
        engine,
        tmp_path,
        latency_ms=20,
        orders=600,
        customers=60,
        loop_s=15,
        seed=14,
        drain_s=60,
    )
    assert kills >= 3
    books = result["books"]
    # The faults really happened, and were retried with the same charge key.
    assert books["injected_errors"] > 0, books
    assert books["injected_timeouts"] > 0, books
    assert books["replays"] > 0, books


async def test_a_zombie_is_fenced_by_its_transactional_id(
    endpoints: Endpoints, database_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    """SIGSTOP a member, let the group move its partitions and the new owner commit, SIGCONT:
    the zombie's transactions are refused (ProducerFenced), none of its events are visible,
    and it gives the partitions up and keeps running (rejoining the group), exit 0 on SIGTERM."""
    with gateway_process(tmp_path, latency_ms=20) as url:
        settings = payments_settings(endpoints, database_url, url)
        await ensure_topics(settings.kafka, settings.payments.topic)
        per_customer, request_ids = await place_orders(settings, count=300, customers=30)
        zombie = OrdersProcess("payments", settings, tmp_path)
        other: OrdersProcess | None = None
        try:
            assert zombie.wait_for_output("taken over at", timeout=30), zombie.output()
            await asyncio.sleep(1.0)  # mid-stream: charges in flight, transactions open
            zombie.signal(signal.SIGSTOP)
            other = OrdersProcess("payments", settings, tmp_path)
            await wait_until_all_committed(settings, timeout_s=60)
            zombie.signal(signal.SIGCONT)
            assert zombie.wait_for_output("fenced", timeout=30), zombie.output()[-3000:]
            await asyncio.sleep(3)
            assert zombie.alive(), zombie.output()[-3000:]
            assert zombie.stop() == 0, zombie.output()[-3000:]
            assert other.stop() == 0, other.output()[-3000:]
        finally:
            for member in (zombie, other):
                if member is not None and member.alive():
                    member.signal(signal.SIGCONT)
                    member.kill()
        await check_exactly_once(settings, engine, url, per_customer, request_ids)

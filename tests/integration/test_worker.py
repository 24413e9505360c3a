"""The worker group against the real broker and database: exactly-once effects, in order."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from aiokafka import AIOKafkaProducer
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app import contract, dlq_headers
from app.db.tables import consumer_positions, orders
from app.settings import Settings
from tests.integration.api_client import api_client
from tests.integration.kafka_tools import end_offsets, non_empty, read_topic
from tests.integration.load import customers_for, orders_accepted, place_orders
from tests.integration.oracle import (
    Expectations,
    check_ledger,
    stored_positions,
    wait_until_stored,
)
from tests.integration.processes import OrdersProcess
from tests.integration.waiting import eventually
from tests.integration.worker_harness import committed_offsets, worker_running


async def test_5000_orders_for_100_customers_are_stored_once_each_in_order(
    settings: Settings, engine: AsyncEngine, run_id: str, tmp_path: Path
) -> None:
    workers = [OrdersProcess("worker", settings, tmp_path) for _ in range(2)]
    expected = Expectations()
    try:
        async with api_client(settings) as client:
            await place_orders(client, expected, customers_for(run_id, 100), per_customer=50)
        assert expected.total == 5000
        assert await wait_until_stored(engine, expected) == 5000
    finally:
        codes = [worker.stop() for worker in workers]
    assert codes == [0, 0], [w.output()[-2000:] for w in workers]

    report = await check_ledger(engine, expected)
    assert report.holds, str(report)
    ends = await end_offsets(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
    positions = await stored_positions(
        engine, settings.worker.group_id, settings.kafka.orders_topic
    )
    assert positions == non_empty(ends)
    assert await committed_offsets(settings) == non_empty(ends)


async def test_redelivered_records_change_nothing(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    expected = await orders_accepted(settings, customers_for(run_id, 10), per_customer=30)
    async with worker_running(settings, engine) as first:
        assert await wait_until_stored(engine, expected) == 300
    assert first.stats.inserted == 300

    async def snapshot() -> list[tuple[object, ...]]:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(orders.c.order_id, orders.c.sequence, orders.c.processed_at)
                .where(orders.c.customer_id.in_(list(expected.accepted)))
                .order_by(orders.c.order_id)
            )
            return [tuple(row) for row in rows]

    before = await snapshot()
    # Seek back: rewind the stored positions to the start, so the group replays everything.
    async with engine.begin() as connection:
        await connection.execute(
            update(consumer_positions)
            .where(consumer_positions.c.group_id == settings.worker.group_id)
            .values(next_offset=0)
        )
    async with worker_running(settings, engine) as replay:
        assert await eventually(lambda: replay.stats.records >= 300)
    assert replay.stats.inserted == 0
    # A member of another group replays the same records into the same database.
    other = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"group_id": f"other-{run_id}"})}
    )
    async with worker_running(other, engine) as stranger:
        assert await eventually(lambda: stranger.stats.records >= 300)
    assert stranger.stats.inserted == 0
    assert await snapshot() == before
    assert (await check_ledger(engine, expected)).holds


async def test_workers_joining_and_leaving_mid_stream_keep_the_ledger(
    settings: Settings, engine: AsyncEngine, run_id: str, tmp_path: Path
) -> None:
    expected = Expectations()
    first = OrdersProcess("worker", settings, tmp_path)
    joined: list[OrdersProcess] = []
    try:
        async with api_client(settings) as client:
            load = asyncio.create_task(
                place_orders(
                    client, expected, customers_for(run_id, 60), per_customer=40, concurrency=20
                )
            )
            await asyncio.sleep(1.0)
            joined = [OrdersProcess("worker", settings, tmp_path) for _ in range(2)]
            await asyncio.sleep(4.0)
            assert [worker.stop() for worker in joined] == [0, 0]
            await load
        assert await wait_until_stored(engine, expected) == expected.total == 2400
    finally:
        assert first.stop() == 0
        for worker in joined:
            if worker.alive():
                worker.kill()
    assert "partitions revoked" in first.output()  # the group really rebalanced
    assert any("partitions assigned" in worker.output() for worker in joined)
    report = await check_ledger(engine, expected)
    assert report.holds, str(report)


def _direct_order_id(customer: str, n: int) -> uuid.UUID:
    """The id of this test's n-th record produced directly (bypassing the API), known ahead."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"test:direct/{customer}/{n}")


def _envelope_bytes(customer: str, n: int, deadline_s: float = 60.0) -> bytes:
    items = (contract.OrderLine(sku="p", quantity=1, unit_price=Decimal(n)),)
    now = datetime.now(UTC)
    envelope = contract.OrderEnvelope(
        order_id=_direct_order_id(customer, n),
        customer_id=customer,
        items=items,
        total=contract.order_total(items),
        currency="USD",
        accepted_at=now,
        accept_by=now + timedelta(seconds=deadline_s),
    )
    return contract.encode(envelope, "direct")[0]


async def test_poison_records_go_to_the_dead_letter_topic_and_the_rest_flows(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    customer = f"{run_id}-poisoned"
    poison = {
        b"not json at all": "PoisonRecordError",
        json.dumps(
            {"schema_version": 99, "order_id": str(uuid.uuid4())}
        ).encode(): "schema_version",
        b'{"schema_version": 1}': "order_id",
        # A valid order but for a deadline with no time zone: must not crash the worker.
        json.dumps(
            {
                **json.loads(_envelope_bytes(customer, 99)),
                "accept_by": "0001-01-01T00:00:00",
            }
        ).encode(): "accept_by",
    }
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers, enable_idempotence=True
    )
    await producer.start()
    expected = Expectations()
    try:
        for n in range(10):  # one key, one partition: poison sits between good orders
            await producer.send_and_wait(
                settings.kafka.orders_topic, _envelope_bytes(customer, n), key=customer.encode()
            )
            expected.accept(customer, _direct_order_id(customer, n))
            if n in (1, 3, 5, 7):
                value = list(poison)[(n - 1) // 2]
                await producer.send_and_wait(
                    settings.kafka.orders_topic,
                    value,
                    key=customer.encode(),
                    headers=[("request-id", b"bad")],
                )
    finally:
        await producer.stop()

    async with worker_running(settings, engine) as worker:
        assert await wait_until_stored(engine, expected) == 10
        assert await eventually(lambda: worker.stats.dead_lettered == 4)
    assert (await check_ledger(engine, expected)).holds

    dead = await read_topic(settings.kafka.bootstrap_servers, settings.kafka.dlq_topic)
    assert [record.value for record in dead] == list(poison)
    source = await read_topic(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
    poison_offsets = [r.offset for r in source if r.value in poison]
    for record, offset, value in zip(dead, poison_offsets, poison, strict=True):
        headers = {key: raw.decode() for key, raw in record.headers}
        assert headers[dlq_headers.H_TOPIC] == settings.kafka.orders_topic
        assert headers[dlq_headers.H_PARTITION] == str(source[0].partition)
        assert headers[dlq_headers.H_OFFSET] == str(offset)
        assert headers[dlq_headers.H_ERROR_CLASS] == "PoisonRecordError"
        assert (
            poison[value]
            in headers[dlq_headers.H_ERROR_MESSAGE] + headers[dlq_headers.H_ERROR_CLASS]
        )
        assert headers[dlq_headers.H_WORKER] == worker.name
        assert datetime.fromisoformat(headers[dlq_headers.H_FAILED_AT]).tzinfo is not None
        assert headers["request-id"] == "bad"  # the original headers travel along
    ends = await end_offsets(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
    assert await stored_positions(
        engine, settings.worker.group_id, settings.kafka.orders_topic
    ) == non_empty(ends)


async def test_sigterm_during_a_batch_exits_0_and_nothing_is_lost_or_doubled(
    settings: Settings, engine: AsyncEngine, run_id: str, tmp_path: Path
) -> None:
    expected = Expectations()
    worker = OrdersProcess("worker", settings, tmp_path)
    async with api_client(settings) as client:
        load = asyncio.create_task(
            place_orders(client, expected, customers_for(run_id, 40), per_customer=50)
        )
        await asyncio.sleep(2.0)  # orders are flowing and batches are in flight
        worker.signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.wait, settings.worker.shutdown_timeout_s + 5)
        assert code == 0, worker.output()[-3000:]
        assert "finishing the batch in flight" in worker.output()
        assert "LeaveGroup request succeeded" in worker.output()
        await load
    restarted = OrdersProcess("worker", settings, tmp_path)
    try:
        assert await asyncio.to_thread(restarted.wait_for_output, "partitions assigned")
        assert await wait_until_stored(engine, expected) == expected.total == 2000
    finally:
        assert restarted.stop() == 0
    report = await check_ledger(engine, expected)
    assert report.holds, str(report)


async def test_processed_orders_are_served_by_the_api(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    expected = Expectations()
    customer = customers_for(run_id, 1)[0]
    async with api_client(settings) as client:
        await place_orders(client, expected, [customer], per_customer=7)
        first = expected.accepted[customer][0]
        async with worker_running(settings, engine):
            assert await wait_until_stored(engine, expected) == 7
        stored = await client.get(f"/orders/{first}")
        assert stored.status_code == 200
        assert stored.json()["sequence"] == 1
        assert stored.json()["status"] == "processed"
        unknown = await client.get(f"/orders/{uuid.uuid4()}")
        assert unknown.status_code == 404

        seen: list[str] = []
        cursor: str | None = None
        while True:
            params = {"limit": 3} | ({"after": cursor} if cursor else {})
            page = (await client.get(f"/customers/{customer}/orders", params=params)).json()
            seen += [item["order_id"] for item in page["items"]]
            cursor = page["next"]
            if cursor is None:
                break
    assert seen == [str(order_id) for order_id in expected.accepted[customer]]


async def test_an_order_appended_after_its_acceptance_deadline_is_never_processed(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    """What happens to a record the API gave up on (503) that the producer still delivered."""
    customer = f"{run_id}-late"
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers, enable_idempotence=True
    )
    await producer.start()
    try:
        late = await producer.send_and_wait(
            settings.kafka.orders_topic,
            _envelope_bytes(customer, 0, deadline_s=-1.0),
            key=customer.encode(),
        )
        on_time = await producer.send_and_wait(
            settings.kafka.orders_topic, _envelope_bytes(customer, 1), key=customer.encode()
        )
    finally:
        await producer.stop()
    assert late.timestamp_type == on_time.timestamp_type == contract.LOG_APPEND_TIME

    expected = Expectations()
    expected.accept(customer, _direct_order_id(customer, 1))
    async with worker_running(settings, engine) as worker:
        assert await wait_until_stored(engine, expected) == 1
        assert await eventually(lambda: worker.stats.expired == 1)
    report = await check_ledger(engine, expected)
    assert report.holds, str(report)  # the late one is not there: "unexpected" would say so
    assert await stored_positions(
        engine, settings.worker.group_id, settings.kafka.orders_topic
    ) == {late.partition: on_time.offset + 1}

"""No single record can stall the group, or be skipped without a trace.

Each scenario puts something hostile on the real `orders` topic (a NUL that PostgreSQL refuses,
a value PostgreSQL's constraints refuse, a letter too large for the dead-letter topic, an
unreachable dead-letter topic, transaction markers and aborted transactions, records deleted
under the group's feet) among ordinary orders, and checks with the ledger oracle that every
ordinary order is stored once and in order, that the hostile record is exactly where it should be
(DLQ, quarantine, skipped), and that every partition's position reached the log's end.
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.records_to_delete import RecordsToDelete
from aiokafka.structs import TopicPartition
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import contract
from app.db.tables import quarantined_records, skipped_offsets
from app.errors import PoisonRecordError
from app.operations.dlq import replay_dead_letter
from app.settings import Settings
from app.topics import topic_configs
from tests.integration.direct import DirectOrder, direct_order, started_producer, valid_order
from tests.integration.kafka_tools import end_offsets, non_empty, read_topic
from tests.integration.oracle import (
    Expectations,
    check_ledger,
    stored_positions,
    wait_until_stored,
)
from tests.integration.waiting import eventually
from tests.integration.worker_harness import worker_running


async def produce(settings: Settings, orders: list[DirectOrder]) -> None:
    producer = await started_producer(settings.kafka.bootstrap_servers)
    try:
        for order in orders:
            await producer.send_and_wait(
                settings.kafka.orders_topic, order.value, key=order.customer_id.encode()
            )
    finally:
        await producer.stop()


async def positions_reach_log_end(settings: Settings, engine: AsyncEngine) -> bool:
    async def at_end() -> bool:
        ends = non_empty(await end_offsets(settings.kafka.bootstrap_servers, topic))
        return await stored_positions(engine, settings.worker.group_id, topic) == ends

    topic = settings.kafka.orders_topic
    for _ in range(100):
        if await at_end():
            return True
        await asyncio.sleep(0.2)
    return False


def ordinary_traffic(run_id: str, customers: int = 6, each: int = 5) -> list[DirectOrder]:
    return [valid_order(f"{run_id}-c{c}", n) for n in range(each) for c in range(customers)]


async def test_a_nul_in_a_record_is_dead_lettered_and_stalls_nothing(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    """Regression: on the old main, PostgreSQL's jsonb refused the NUL, the error counted as
    transient, and the batch (holding every partition of the member) was retried forever."""
    customer = f"{run_id}-nul"
    hostile = direct_order(customer, 2, sku="A\u0000B")
    mine = [valid_order(customer, 1), hostile, valid_order(customer, 3)]
    others = ordinary_traffic(run_id)
    await produce(settings, [*mine, *others])
    expected = Expectations()
    for order in [mine[0], mine[2], *others]:
        expected.accept(order.customer_id, order.order_id)

    async with worker_running(settings, engine) as worker:
        assert await wait_until_stored(engine, expected, timeout=60) == expected.total
        assert await positions_reach_log_end(settings, engine)
        assert worker.stats.dead_lettered == 1
    assert (await check_ledger(engine, expected)).holds
    [letter] = await read_topic(settings.kafka.bootstrap_servers, settings.kafka.dlq_topic)
    assert letter.value == hostile.value
    headers = {name: value.decode() for name, value in letter.headers}
    assert "sku" in headers["dlq.error.message"]


async def test_an_order_postgresql_refuses_is_isolated_and_the_rest_of_its_batch_stored(
    settings: Settings, engine: AsyncEngine, owner_engine: AsyncEngine, run_id: str
) -> None:
    """A record that passes the contract but that PostgreSQL refuses for its data (here a CHECK
    constraint this test adds) is bisected out of its batch and dead-lettered with its SQLSTATE;
    the customer's other orders are stored, numbered in order, around it."""
    refused_price = "987654.3217"
    constraint = f"ck_test_refused_{run_id}"
    async with owner_engine.begin() as connection:
        await connection.execute(
            text(f"ALTER TABLE orders ADD CONSTRAINT {constraint} CHECK (total <> {refused_price})")
        )
    try:
        customer = f"{run_id}-refused"
        refused = direct_order(customer, 5, unit_price=refused_price)
        mine = [valid_order(customer, n) for n in range(5)]
        mine += [refused] + [valid_order(customer, n) for n in range(6, 12)]
        others = ordinary_traffic(run_id)
        await produce(settings, [*mine, *others])
        expected = Expectations()
        for order in [*mine, *others]:
            if order is not refused:
                expected.accept(order.customer_id, order.order_id)

        async with worker_running(settings, engine) as worker:
            assert await wait_until_stored(engine, expected, timeout=60) == expected.total
            assert await positions_reach_log_end(settings, engine)
            assert worker.stats.dead_lettered == 1
        report = await check_ledger(engine, expected)
        assert report.holds, report
    finally:
        async with owner_engine.begin() as connection:
            await connection.execute(text(f"ALTER TABLE orders DROP CONSTRAINT {constraint}"))
    [letter] = await read_topic(settings.kafka.bootstrap_servers, settings.kafka.dlq_topic)
    assert letter.value == refused.value
    headers = {name: value.decode() for name, value in letter.headers}
    assert "SQLSTATE 23514" in headers["dlq.error.message"]
    assert headers["dlq.error.class"] == "IntegrityError"


async def test_a_letter_too_large_for_the_dead_letter_topic_is_quarantined(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    settings = await _with_small_dead_letter_topic(settings, run_id, max_bytes=2048)
    customer = f"{run_id}-huge"
    # Random bytes: the producer compresses, and a compressible letter would fit after all.
    huge = DirectOrder(customer, uuid.uuid4(), base64.b64encode(os.urandom(6000)))
    mine = [valid_order(customer, 1), huge, valid_order(customer, 2)]
    await produce(settings, [*mine, *ordinary_traffic(run_id)])
    expected = await _expect_all_but(settings, [huge])

    async with worker_running(settings, engine) as worker:
        assert await wait_until_stored(engine, expected, timeout=60) == expected.total
        assert await positions_reach_log_end(settings, engine)
        assert worker.stats.quarantined == 1
    assert (await check_ledger(engine, expected)).holds
    rows = await _quarantined(engine, settings)
    assert [row.record_value for row in rows] == [huge.value]
    assert rows[0].record_key == customer.encode()
    assert "refused" in rows[0].reason
    assert await read_topic(settings.kafka.bootstrap_servers, settings.kafka.dlq_topic) == []


async def test_an_unreachable_dead_letter_topic_quarantines_after_its_bound(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    """The DLQ topic does not exist (auto creation is off): dead-lettering fails, the batch is
    retried for WORKER_DLQ_UNREACHABLE_QUARANTINE_S, then the poison goes to the quarantine."""
    settings = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"dlq_topic": f"missing-{run_id}"}),
            "worker": settings.worker.model_copy(
                update={"dlq_unreachable_quarantine_s": 3.0, "commit_timeout_s": 1.0}
            ),
        }
    )
    customer = f"{run_id}-nodlq"
    poison = DirectOrder(customer, uuid.uuid4(), b"not json")
    await produce(settings, [valid_order(customer, 1), poison, *ordinary_traffic(run_id)])
    expected = await _expect_all_but(settings, [poison])

    async with worker_running(settings, engine) as worker:
        assert await wait_until_stored(engine, expected, timeout=90) == expected.total
        assert await positions_reach_log_end(settings, engine)
        assert worker.stats.quarantined == 1
        assert worker.stats.retries >= 1  # it did try the DLQ first
    rows = await _quarantined(engine, settings)
    assert [row.record_value for row in rows] == [poison.value]
    assert "unreachable" in rows[0].reason
    assert rows[0].error_class == "PoisonRecordError"


async def test_transaction_markers_and_aborted_records_never_stall_a_partition(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    """A transactional producer writes to the topic: committed orders are stored, aborted ones
    never, and every position passes the markers to the log's end (on the old main the first
    batch after a marker was fenced forever)."""
    customer = f"{run_id}-tx"
    committed: list[DirectOrder] = []
    aborted: list[DirectOrder] = []
    producer = await started_producer(
        settings.kafka.bootstrap_servers, transactional_id=f"test-tx-{run_id}"
    )
    try:
        for round_ in range(6):
            batch = [valid_order(customer, round_ * 10 + n) for n in range(3)]
            await producer.begin_transaction()
            for order in batch:
                await producer.send(settings.kafka.orders_topic, order.value, key=customer.encode())
            if round_ % 2:
                await producer.abort_transaction()
                aborted += batch
            else:
                await producer.commit_transaction()
                committed += batch
    finally:
        await producer.stop()
    expected = Expectations()
    for order in committed:
        expected.accept(customer, order.order_id)
    # An aborted order stored would show as `unexpected` in the oracle's report.

    async with worker_running(settings, engine) as worker:
        assert await wait_until_stored(engine, expected, timeout=60) == expected.total
        assert await positions_reach_log_end(settings, engine)
        assert worker.stats.fenced == 0
    report = await check_ledger(engine, expected)
    assert report.holds, report
    skipped = await _skipped(engine, settings)
    # Six markers and three aborted transactions of three records: 15 offsets passed.
    assert sum(row.to_offset - row.from_offset for row in skipped) == 6 + 9


async def test_records_deleted_past_the_stored_position_are_skipped_on_the_record(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    customer = f"{run_id}-deleted"
    first = [valid_order(customer, n) for n in range(5)]
    await produce(settings, first)
    expected = Expectations()
    for order in first:
        expected.accept(customer, order.order_id)
    async with worker_running(settings, engine):
        assert await wait_until_stored(engine, expected, timeout=60) == 5

    later = [valid_order(customer, n) for n in range(5, 10)]
    await produce(settings, later)
    [partition] = non_empty(
        await end_offsets(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
    )
    tp = TopicPartition(settings.kafka.orders_topic, partition)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(before_offset=8)})  # 5, 6, 7 gone
    finally:
        await admin.close()
    for order in later[3:]:
        expected.accept(customer, order.order_id)

    async with worker_running(settings, engine):
        assert await wait_until_stored(engine, expected, timeout=60) == 7
        assert await positions_reach_log_end(settings, engine)
    report = await check_ledger(engine, expected)
    assert report.holds, report
    [gap] = await _skipped(engine, settings)
    assert (gap.partition, gap.from_offset, gap.to_offset) == (partition, 5, 8)
    assert "deleted" in gap.reason


# --- helpers ---------------------------------------------------------------------------------


async def _ordinary_traffic_flows_and_one_record_is_quarantined(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> Any:
    """Ordinary orders after the hostile record: all stored, every position at the log's end,
    and exactly one record quarantined (returned)."""
    await produce(settings, ordinary_traffic(run_id))
    expected = await _expect_all_but(settings, [])
    async with worker_running(settings, engine) as worker:
        assert await wait_until_stored(engine, expected, timeout=60) == expected.total
        assert await positions_reach_log_end(settings, engine)
        assert worker.stats.quarantined == 1
    [row] = await _quarantined(engine, settings)
    return row


async def _expect_all_but(settings: Settings, left_out: list[DirectOrder]) -> Expectations:
    """Every valid order on the topic is expected, in topic order, except `left_out`."""
    skip = {order.value for order in left_out}
    expected = Expectations()
    for record in await read_topic(settings.kafka.bootstrap_servers, settings.kafka.orders_topic):
        if record.value in skip:
            continue
        try:
            envelope = contract.decode(record.value)
        except PoisonRecordError:
            continue
        expected.accept(envelope.customer_id, envelope.order_id)
    return expected


async def _with_small_dead_letter_topic(
    settings: Settings, run_id: str, max_bytes: int
) -> Settings:
    dlq = f"small-dlq-{run_id}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        configs = {**topic_configs(settings.kafka), "max.message.bytes": str(max_bytes)}
        await admin.create_topics([NewTopic(dlq, 1, 1, topic_configs=configs)])
    finally:
        await admin.close()
    return settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"dlq_topic": dlq})}
    )


async def _quarantined(engine: AsyncEngine, settings: Settings) -> list:  # type: ignore[type-arg]
    async with engine.connect() as connection:
        result = await connection.execute(
            select(quarantined_records)
            .where(quarantined_records.c.group_id == settings.worker.group_id)
            .order_by(quarantined_records.c.id)
        )
        return list(result)


async def _skipped(engine: AsyncEngine, settings: Settings) -> list:  # type: ignore[type-arg]
    async with engine.connect() as connection:
        result = await connection.execute(
            select(skipped_offsets)
            .where(skipped_offsets.c.group_id == settings.worker.group_id)
            .order_by(skipped_offsets.c.partition, skipped_offsets.c.from_offset)
        )
        return list(result)


async def test_a_dead_letter_replayed_twice_is_judged_by_its_first_journey(
    settings: Settings, engine: AsyncEngine, owner_engine: AsyncEngine, run_id: str
) -> None:
    """Regression: a dead letter replayed a second time carried two `dlq.original.timestamp`
    headers, the last (its first replay's, after the deadline) won, and the order was skipped
    as late. Here PostgreSQL refuses the order until the operator fixes the cause; the first
    replay (after its deadline) is refused again; the second, after the fix, is stored."""
    refused_price = "876543.2109"
    constraint = f"ck_test_replay_{run_id}"
    async with owner_engine.begin() as connection:
        await connection.execute(
            text(f"ALTER TABLE orders ADD CONSTRAINT {constraint} CHECK (total <> {refused_price})")
        )
    customer = f"{run_id}-replayed"
    order = direct_order(customer, 1, deadline_s=2.0, unit_price=refused_price)
    try:
        await produce(settings, [order])
        async with worker_running(settings, engine) as worker:
            assert await eventually(lambda: worker.stats.dead_lettered == 1)
            await asyncio.sleep(2.5)  # the order's acceptance deadline has passed
            await replay_dead_letter(settings.kafka, engine, 0)
            assert await eventually(lambda: worker.stats.dead_lettered == 2)
            async with owner_engine.begin() as connection:
                await connection.execute(text(f"ALTER TABLE orders DROP CONSTRAINT {constraint}"))
            await replay_dead_letter(settings.kafka, engine, 1)
            expected = Expectations()
            expected.accept(customer, order.order_id)
            assert await wait_until_stored(engine, expected, timeout=30) == 1
            assert worker.stats.expired == 0
    finally:
        async with owner_engine.begin() as connection:
            await connection.execute(
                text(f"ALTER TABLE orders DROP CONSTRAINT IF EXISTS {constraint}")
            )


async def test_a_stored_position_on_an_aborted_transaction_never_fences_forever(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    """Found in review: a worker restarting at a stored position that holds an aborted
    transaction, with orders trickling in, fenced every batch forever (each fence's seek made
    the fetch running beside it untrusted, so its span began at its first record again)."""
    customer = f"{run_id}-aborted-at-restart"
    first = valid_order(customer, 0)
    await produce(settings, [first])
    expected = Expectations()
    expected.accept(customer, first.order_id)
    async with worker_running(settings, engine):
        assert await wait_until_stored(engine, expected, timeout=30) == 1
    transactional = await started_producer(
        settings.kafka.bootstrap_servers, transactional_id=f"restart-tx-{run_id}"
    )
    try:
        await transactional.begin_transaction()
        aborted = valid_order(customer, 1)
        await transactional.send(settings.kafka.orders_topic, aborted.value, key=customer.encode())
        await transactional.abort_transaction()
    finally:
        await transactional.stop()

    async def trickle() -> None:
        producer = await started_producer(settings.kafka.bootstrap_servers)
        try:
            for n in range(2, 150):
                order = valid_order(customer, n)
                await producer.send(settings.kafka.orders_topic, order.value, key=customer.encode())
                expected.accept(customer, order.order_id)
                await asyncio.sleep(0.02)
            await producer.flush()
        finally:
            await producer.stop()

    async with worker_running(settings, engine) as worker:
        await trickle()
        assert await wait_until_stored(engine, expected, timeout=30) == expected.total
        assert await positions_reach_log_end(settings, engine)
        assert worker.stats.fenced <= 1, worker.stats
    assert (await check_ledger(engine, expected)).holds


async def test_a_record_with_neither_key_nor_value_is_quarantined_not_retried_forever(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    """Found in review: such a record is poison, but the producer refuses to send it to the
    dead-letter topic at all (aiokafka asserts a key or a value): retried, it stalled."""
    # aiokafka's send() refuses one; its batch API, Java and librdkafka clients do not.
    producer = await started_producer(settings.kafka.bootstrap_servers)
    try:
        batch = producer.create_batch()
        batch.append(key=None, value=None, timestamp=None)
        await (await producer.send_batch(batch, settings.kafka.orders_topic, partition=0))
    finally:
        await producer.stop()
    row = await _ordinary_traffic_flows_and_one_record_is_quarantined(settings, engine, run_id)
    assert (row.record_key, row.record_value) == (None, None)
    assert "producer refused" in row.reason


async def test_a_nul_in_a_header_name_of_a_quarantined_record_is_kept_escaped(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    """Found in review: PostgreSQL's text refuses NUL; a header name holding one failed the
    very insert that quarantines its record, and the batch was retried forever."""
    settings = await _with_small_dead_letter_topic(settings, run_id, max_bytes=2048)
    customer = f"{run_id}-nulheader"
    producer = await started_producer(settings.kafka.bootstrap_servers)
    try:
        await producer.send_and_wait(
            settings.kafka.orders_topic,
            base64.b64encode(os.urandom(6000)),
            key=customer.encode(),
            headers=[("bad\x00name", b"v")],
        )
    finally:
        await producer.stop()
    row = await _ordinary_traffic_flows_and_one_record_is_quarantined(settings, engine, run_id)
    assert row.header_names == ["bad\\x00name"]

"""What the workers pass without storing, as operators see it: quarantined records (listed,
replayed once, judged by their first append) and skipped offset ranges (listed with counts)."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from app import contract
from app import dlq_headers as dlq
from app.batching import partition_for
from app.db.quarantine import (
    QuarantinedRecord,
    insert_quarantined,
    list_quarantined,
    record_skipped,
)
from app.operations.dlq import QUARANTINE_SOURCE, ReplayRefusedError, replay_quarantined
from app.settings import Settings
from tests.integration.direct import late_order
from tests.integration.oracle import Expectations, check_ledger, wait_until_stored
from tests.integration.processes import settings_env
from tests.integration.worker_harness import worker_running

ORDERS = str(Path(sys.executable).with_name("orders"))


def quarantined(
    settings: Settings, order: contract.OrderEnvelope, appended: datetime, offset: int
) -> QuarantinedRecord:
    """As a worker keeps a record the dead-letter topic could not take."""
    value, headers = contract.encode(order, "r-1")
    return QuarantinedRecord(
        group_id=settings.worker.group_id,
        topic=settings.kafka.orders_topic,
        partition=partition_for(order.key, settings.kafka.partitions),
        offset=offset,
        key=order.key,
        value=value,
        headers=(*headers, ("trace", b"\xff\x00")),
        timestamp=int(appended.timestamp() * 1000),
        timestamp_type=contract.LOG_APPEND_TIME,
        error_class="MessageSizeTooLargeError",
        error_message="the dead letter is larger than the DLQ topic takes",
        reason="too large for the dead-letter topic",
        worker="w-test",
    )


async def orders_command(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [ORDERS, *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def record_at(
    settings: Settings, partition: int, offset: int
) -> ConsumerRecord[bytes, bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await consumer.start()
    try:
        tp = TopicPartition(settings.kafka.orders_topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        async with asyncio.timeout(30):
            record: ConsumerRecord[bytes, bytes] = await consumer.getone(tp)
    finally:
        await consumer.stop()
    return record


async def test_a_quarantined_record_is_listed_then_replayed_once_with_its_first_append(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    order, appended = late_order(f"{run_id}-q")
    row = quarantined(settings, order, appended, offset=41)
    other_group = dataclasses.replace(row, group_id="another-group")
    async with engine.begin() as connection:
        assert await insert_quarantined(connection, [row, other_group]) == 2
    async with engine.begin() as connection:  # a redone batch quarantines nothing twice
        assert await insert_quarantined(connection, [row]) == 0

    async with engine.connect() as connection:
        [stored], total = await list_quarantined(
            connection, settings.worker.group_id, settings.kafka.orders_topic
        )
    assert total == 1
    assert stored.record == row
    assert stored.replayed_at is None

    listed = await orders_command(settings, "dlq", "list")
    assert listed.returncode == 0, listed
    assert f"dead letters in topic {settings.kafka.dlq_topic}:" in listed.stdout
    assert "quarantined records in PostgreSQL" in listed.stdout
    [line] = [text for text in listed.stdout.splitlines() if row.origin in text]
    assert line.split()[0] == str(stored.id)
    for shown in (row.error_class, row.error_message, row.reason, row.worker):
        assert shown in line

    planned = await orders_command(settings, "dlq", "replay", "--quarantined", str(stored.id))
    assert planned.returncode == 0, planned
    assert "plan only" in planned.stdout

    partition, offset = await replay_quarantined(settings.kafka, engine, stored.id)
    assert partition == row.partition  # same key, same partition
    sent = await record_at(settings, partition, offset)
    assert (sent.key, sent.value) == (row.key, row.value)
    assert (
        tuple(sent.headers[: len(row.headers)]) == row.headers
    )  # its own headers, bytes as they were
    assert dict(sent.headers)[dlq.H_TIMESTAMP] == str(row.timestamp).encode()
    assert dict(sent.headers)[dlq.H_TIMESTAMP_TYPE] == str(contract.LOG_APPEND_TIME).encode()
    assert dict(sent.headers)[dlq.H_REPLAYED_FROM] == f"{QUARANTINE_SOURCE}{stored.id}".encode()

    async with engine.connect() as connection:
        waiting, _ = await list_quarantined(
            connection, settings.worker.group_id, settings.kafka.orders_topic
        )
        [replayed], _ = await list_quarantined(
            connection, settings.worker.group_id, settings.kafka.orders_topic, include_replayed=True
        )
    assert waiting == []
    assert replayed.replayed_at is not None

    with pytest.raises(ReplayRefusedError, match="already replayed"):
        await replay_quarantined(settings.kafka, engine, stored.id)
    with pytest.raises(ReplayRefusedError, match="no quarantined record"):
        await replay_quarantined(settings.kafka, engine, stored.id + 10_000)
    again = await orders_command(
        settings, "dlq", "replay", "--quarantined", str(stored.id), "--execute"
    )
    assert again.returncode == 1
    assert f"orders: quarantined record {stored.id} ({row.origin}) was already replayed" in (
        again.stderr
    )
    assert "Traceback" not in again.stderr


async def test_a_replayed_quarantined_order_is_stored_judged_by_its_first_append(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    customer = f"{run_id}-late"
    order, appended = late_order(customer)
    async with engine.begin() as connection:
        await insert_quarantined(connection, [quarantined(settings, order, appended, offset=0)])
    async with engine.connect() as connection:
        [stored], _ = await list_quarantined(
            connection, settings.worker.group_id, settings.kafka.orders_topic
        )

    await replay_quarantined(settings.kafka, engine, stored.id)
    expected = Expectations()
    expected.accept(customer, order.order_id)
    async with worker_running(settings, engine) as worker:
        assert await wait_until_stored(engine, expected) == 1
    assert worker.stats.expired == 0
    assert (await check_ledger(engine, expected)).holds


async def test_skipped_offsets_are_listed_per_partition_with_reason_and_counts(
    settings: Settings, engine: AsyncEngine
) -> None:
    group, topic = settings.worker.group_id, settings.kafka.orders_topic
    async with engine.begin() as connection:
        assert await record_skipped(
            connection, group, topic, 0, 10, 11, "transaction marker", "w-1"
        )
        assert await record_skipped(connection, group, topic, 0, 20, 25, "aborted", "w-1")
        assert await record_skipped(
            connection, group, topic, 0, 30, 31, "transaction marker", "w-2"
        )
        assert await record_skipped(connection, group, topic, 3, 0, 100, "deleted", "w-2")
        assert await record_skipped(connection, "another-group", topic, 3, 0, 7, "deleted", "w-9")
    async with engine.begin() as connection:  # a redone batch notes nothing twice
        assert not await record_skipped(
            connection, group, topic, 0, 10, 11, "transaction marker", "w-1"
        )

    shown = await orders_command(settings, "skipped")
    assert shown.returncode == 0, shown
    rows = [line.split(maxsplit=3) for line in shown.stdout.splitlines()]
    assert ["0", "1", "5", "aborted"] in rows
    assert ["0", "2", "2", "transaction marker"] in rows
    assert ["3", "1", "100", "deleted"] in rows
    assert ["total", "4", "107"] in rows
    ranges = [line.split()[:5] for line in shown.stdout.splitlines()]
    assert ["0", "20", "24", "5", "aborted"] in ranges
    assert ["3", "0", "99", "100", "deleted"] in ranges

    one = await orders_command(settings, "skipped", "--partition", "3", "--limit", "0")
    assert one.returncode == 0, one
    assert [line.split(maxsplit=3) for line in one.stdout.splitlines()][2:4] == [
        ["3", "1", "100", "deleted"],
        ["total", "1", "100"],
    ]

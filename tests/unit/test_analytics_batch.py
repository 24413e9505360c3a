"""What analytics counts of a fetched batch, without services: real orders only (as the worker
judges them), keyed by their first append time, and how far each partition's log has got."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from aiokafka.structs import ConsumerRecord, TopicPartition

from app import dlq_headers
from app.analytics.batch import CountedBatch, count
from app.analytics.windows import Sale
from app.db.positions import PartitionSpan
from app.worker import records
from app.worker.fetch_positions import Batch

TOPIC = "orders"


def order(accept_by_ms: int, currency: str = "EUR") -> bytes:
    accept_by = datetime.fromtimestamp(accept_by_ms / 1000, UTC)
    body = {
        "schema_version": 1,
        "order_id": str(uuid.uuid4()),
        "customer_id": "c-1",
        "items": [{"sku": "p", "quantity": 3, "unit_price": "1.10"}],
        "total": "3.30",
        "currency": currency,
        "accepted_at": (accept_by - timedelta(seconds=5)).isoformat(),
        "accept_by": accept_by.isoformat(),
    }
    return json.dumps(body).encode()


def record(
    partition: int,
    offset: int,
    value: bytes,
    timestamp: int,
    headers: tuple[tuple[str, bytes], ...] = (),
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=TOPIC,
        partition=partition,
        offset=offset,
        timestamp=timestamp,
        timestamp_type=1,  # LogAppendTime
        key=b"c-1",
        value=value,
        checksum=None,
        serialized_key_size=3,
        serialized_value_size=len(value),
        headers=headers,
    )


def counted(batch: Batch, caught_up: dict[int, int] | None = None) -> CountedBatch:
    prepared = asyncio.run(records.prepare(batch, {tp: (None, None) for tp in batch}))
    return count(prepared, batch, caught_up or {})


def test_only_orders_appended_in_time_count_and_every_record_moves_the_watermark() -> None:
    p0, p1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    batch = {
        p0: [
            record(0, 0, order(100_000), 61_000),  # an order
            record(0, 1, b"not an order", 62_000),  # undecodable: skipped
            record(0, 2, order(10_000), 63_000),  # appended after its deadline: skipped
        ],
        p1: [record(1, 7, order(100_000, "USD"), 30_000)],
    }
    batch_count = counted(batch)
    assert batch_count.sales == {
        0: [Sale(61_000, "EUR", Decimal("3.30"))],
        1: [Sale(30_000, "USD", Decimal("3.30"))],
    }
    assert batch_count.orders == 2
    assert batch_count.skipped == 2
    assert batch_count.late_appended == 1
    # The skipped records' append times still say how far partition 0 has got.
    assert batch_count.progress == {0: 63_000, 1: 30_000}
    assert batch_count.spans == [PartitionSpan(0, 0, 3), PartitionSpan(1, 7, 8)]


def test_a_partition_read_to_its_end_counts_as_having_got_to_when_that_was_heard() -> None:
    p0 = TopicPartition(TOPIC, 0)
    batch = {p0: [record(0, 0, order(100_000), 61_000)]}
    batch_count = counted(batch, caught_up={0: 64_000, 2: 90_000})
    assert batch_count.progress == {0: 64_000, 2: 90_000}
    assert not batch_count.empty
    assert counted({}, caught_up={}).empty


def test_a_replayed_order_counts_in_the_window_of_its_first_append() -> None:
    replayed = (
        (dlq_headers.H_REPLAYED_FROM, b"orders.DLQ/0@3"),
        (dlq_headers.H_TIMESTAMP, b"5000"),
        (dlq_headers.H_TIMESTAMP_TYPE, b"1"),
    )
    p0 = TopicPartition(TOPIC, 0)
    batch = {p0: [record(0, 9, order(8_000), 900_000, replayed)]}
    batch_count = counted(batch)
    assert batch_count.sales == {0: [Sale(5_000, "EUR", Decimal("3.30"))]}
    assert batch_count.progress == {0: 900_000}  # the log itself is at the replay's time


def test_fenced_partitions_leave_nothing_of_theirs_in_the_batch() -> None:
    p0, p1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    batch = {
        p0: [record(0, 0, order(100_000), 61_000)],
        p1: [record(1, 0, order(100_000), 62_000)],
    }
    fenced = counted(batch, caught_up={1: 70_000}).fenced_off({1: 5})
    assert list(fenced.sales) == [0]
    assert fenced.progress == {0: 61_000}
    assert fenced.spans == [PartitionSpan(0, 0, 1)]
    assert fenced.fenced == {1: 5}
    assert fenced.orders == 1

"""PartitionBatches against the real broker: offsets, order, unanswered batches, closing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from app.batching import Delivery, PartitionBatches, partition_for
from app.publisher import build_producer, close_producer
from app.settings import Settings
from tests.integration.kafka_tools import read_topic

HEADERS = [("content-type", b"text/plain")]


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    producer = build_producer(settings.kafka)
    await producer.start()
    yield producer
    await close_producer(producer, 5.0)


async def test_records_of_one_batch_get_consecutive_offsets_in_append_order(
    settings: Settings, producer: AIOKafkaProducer
) -> None:
    batches = PartitionBatches(producer, settings.kafka.orders_topic)
    # Appended without yielding: they all share one batch.
    futures = [batches.append(2, b"k", f"v{n}".encode(), HEADERS) for n in range(5)]
    deliveries = await asyncio.wait_for(asyncio.gather(*futures), 10)

    assert [d.partition for d in deliveries] == [2] * 5
    first = deliveries[0].offset
    assert [d.offset for d in deliveries] == list(range(first, first + 5))
    on_topic = await read_topic(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
    assert [(r.partition, r.offset, r.value) for r in on_topic] == [
        (2, first + n, f"v{n}".encode()) for n in range(5)
    ]
    assert all(dict(r.headers) == dict(HEADERS) for r in on_topic)


async def test_concurrent_appends_keep_each_keys_order_and_report_true_offsets(
    settings: Settings, producer: AIOKafkaProducer
) -> None:
    batches = PartitionBatches(producer, settings.kafka.orders_topic)
    partitions = settings.kafka.partitions
    reported: dict[bytes, Delivery] = {}

    async def customer(number: int) -> None:
        key = f"customer-{number}".encode()
        for sequence in range(20):  # one after another, like a client that awaits each 202
            value = f"{number}:{sequence}".encode()
            delivery = batches.append(partition_for(key, partitions), key, value, HEADERS)
            reported[value] = await asyncio.wait_for(delivery, 10)

    await asyncio.gather(*(customer(n) for n in range(40)))

    on_topic = await read_topic(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
    assert len(on_topic) == 800
    for record in on_topic:
        assert record.value is not None
        assert (reported[record.value].partition, reported[record.value].offset) == (
            record.partition,
            record.offset,
        )
    sequences: dict[bytes, list[int]] = {}
    for record in on_topic:  # partition, then offset order
        assert record.key is not None
        assert record.value is not None
        sequences.setdefault(record.key, []).append(int(record.value.split(b":")[1]))
    assert all(seen == list(range(20)) for seen in sequences.values())
    assert len({r.partition for r in on_topic}) > 1


async def test_a_batch_nobody_waits_for_any_more_never_reaches_the_log(
    settings: Settings, producer: AIOKafkaProducer
) -> None:
    batches = PartitionBatches(producer, settings.kafka.orders_topic)
    abandoned = [batches.append(0, b"k", b"abandoned", HEADERS) for _ in range(3)]
    for future in abandoned:  # as the API's deadline does, before the batch's turn came
        future.set_exception(TimeoutError())
    await asyncio.sleep(0)  # the batch's turn: its flusher finds nobody waiting
    kept = await asyncio.wait_for(batches.append(0, b"k", b"kept", HEADERS), 10)

    on_topic = await read_topic(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
    assert [(r.offset, r.value) for r in on_topic] == [(kept.offset, b"kept")]
    for future in abandoned:
        with pytest.raises(TimeoutError):
            future.result()


async def test_closing_fails_what_was_not_handed_over_and_refuses_more(
    settings: Settings, producer: AIOKafkaProducer
) -> None:
    batches = PartitionBatches(producer, settings.kafka.orders_topic)
    pending = batches.append(1, b"k", b"never sent", HEADERS)
    await batches.close()  # before the flusher had its turn

    with pytest.raises(KafkaConnectionError):
        await pending
    with pytest.raises(KafkaConnectionError):
        batches.append(1, b"k", b"too late", HEADERS)
    on_topic = await read_topic(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
    assert on_topic == []

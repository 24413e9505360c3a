"""The foundation holds: the real broker carries a record, the real database keeps a row."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.tables import consumer_positions
from app.settings import Settings
from app.topics import ensure_topics


async def test_a_record_produced_to_the_broker_is_consumed_back(settings: Settings) -> None:
    payload = uuid.uuid4().bytes
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers, enable_idempotence=True
    )
    await producer.start()
    try:
        sent = await producer.send_and_wait(settings.kafka.orders_topic, payload, key=b"plumbing")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        settings.kafka.orders_topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10_000)
    finally:
        await consumer.stop()
    received = [(r.partition, r.offset, r.key, r.value) for rs in batch.values() for r in rs]
    assert received == [(sent.partition, sent.offset, b"plumbing", payload)]


async def test_a_row_written_through_the_app_engine_is_read_back(engine: AsyncEngine) -> None:
    group = f"plumbing-{uuid.uuid4().hex[:8]}"
    async with engine.begin() as connection:
        await connection.execute(
            insert(consumer_positions).values(
                group_id=group, topic="t", partition=0, next_offset=42, owner="test"
            )
        )
    async with engine.connect() as connection:
        stored = await connection.scalar(
            select(consumer_positions.c.next_offset).where(consumer_positions.c.group_id == group)
        )
    assert stored == 42


async def test_topic_bootstrap_is_idempotent_and_uses_the_settings(settings: Settings) -> None:
    again = await ensure_topics(settings.kafka)
    by_name = {report.name: report for report in again}
    assert not any(report.created for report in again)
    assert by_name[settings.kafka.orders_topic].partitions == settings.kafka.partitions
    assert by_name[settings.kafka.dlq_topic].partitions == 1

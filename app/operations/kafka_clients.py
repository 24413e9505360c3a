"""Short-lived Kafka clients for operator commands, closed on exit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from app.settings import KafkaSettings


@asynccontextmanager
async def admin_client(settings: KafkaSettings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, client_id=f"{settings.client_id}-ops"
    )
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


@asynccontextmanager
async def offsets_consumer(
    settings: KafkaSettings, group_id: str | None = None
) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer that never joins a group: for offset look-ups and explicit commits only."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        client_id=f"{settings.client_id}-ops",
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer._client.force_metadata_update()  # aiokafka has no public refresh
        partitions = consumer.partitions_for_topic(topic) or set()
    if not partitions:
        msg = f"topic {topic!r} does not exist"
        raise LookupError(msg)
    return [TopicPartition(topic, partition) for partition in sorted(partitions)]


async def active_members(admin: AIOKafkaAdminClient, group_id: str) -> int:
    """How many members the group has right now (0 for an empty or unknown group)."""
    [response] = await admin.describe_consumer_groups([group_id])
    groups = response.to_object()["groups"]
    return sum(len(g["members"]) for g in groups if g["group"] == group_id and not g["error_code"])

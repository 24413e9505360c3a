"""Short-lived Kafka clients for operator commands, closed on exit, every wait bounded.

aiokafka waits for a broker that is away: a consumer's offset look-ups retry for
`request_timeout_ms`, `position()` and a fetch loop as long as the caller lets them. An operator
command must instead say, within a bound, that Kafka did not answer (`KafkaCommandError`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import TypeVar

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from app.closing import close_quietly
from app.errors import OrdersError
from app.kafka_security import kafka_client_security
from app.settings import KafkaSettings

T = TypeVar("T")


class KafkaCommandError(OrdersError):
    """Kafka did not answer an operator command in time, or refused it; the message says which."""


async def bounded(settings: KafkaSettings, what: str, awaitable: Awaitable[T]) -> T:
    """Await `what` for at most the request timeout; a timeout or a Kafka error is reported as
    a KafkaCommandError naming what was attempted and where."""
    timeout = settings.request_timeout_ms / 1000
    try:
        async with asyncio.timeout(timeout):
            return await awaitable
    except TimeoutError:
        msg = f"{what}: no answer from Kafka at {settings.bootstrap_servers} within {timeout:g}s"
        raise KafkaCommandError(msg) from None
    except KafkaError as exc:
        msg = f"{what}: Kafka at {settings.bootstrap_servers}: {exc}"  # str() names the class
        raise KafkaCommandError(msg) from exc


@asynccontextmanager
async def admin_client(settings: KafkaSettings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-ops",
        request_timeout_ms=settings.request_timeout_ms,
        **kafka_client_security(settings),
    )
    try:
        await bounded(settings, "connecting", admin.start())
        yield admin
    finally:
        await _quietly(settings, admin.close())


@asynccontextmanager
async def offsets_consumer(
    settings: KafkaSettings,
    group_id: str | None = None,
    *,
    auto_offset_reset: str = "latest",
    isolation_level: str = "read_uncommitted",
) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer that never joins a group: for offset look-ups, explicit commits, and reading
    partitions it is assigned by hand."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset=auto_offset_reset,
        isolation_level=isolation_level,
        client_id=f"{settings.client_id}-ops",
        request_timeout_ms=settings.request_timeout_ms,
        **kafka_client_security(settings),
    )
    try:
        await bounded(settings, "connecting", consumer.start())
        yield consumer
    finally:
        await _quietly(settings, consumer.stop())


async def _quietly(settings: KafkaSettings, closing: Awaitable[None]) -> None:
    # Closing must not hide the error that got us here, nor wait for a broker that is gone.
    await close_quietly(closing, settings.request_timeout_ms / 1000)


async def topic_partitions(
    settings: KafkaSettings, consumer: AIOKafkaConsumer, topic: str
) -> list[TopicPartition]:
    """The topic's partitions; KafkaCommandError when it does not exist, or when this client's
    user may not see it (a secured broker answers so whether or not it exists)."""
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        # Asked for by name: a metadata request for every topic would leave out one this user
        # may not describe, which would then read as missing. (aiokafka has no public refresh.)
        client = consumer._client
        client.add_topic(topic)  # and an update of the metadata, which this awaits
        await bounded(settings, "reading metadata", client.force_metadata_update())
        partitions = consumer.partitions_for_topic(topic) or set()
        if topic in client.cluster.unauthorized_topics:
            user = settings.sasl_username
            who = f"as user {user!r}" if user else "without a user (KAFKA_SASL_USERNAME)"
            where = f"on Kafka at {settings.bootstrap_servers}"
            msg = f"not authorized to read topic {topic!r} {who} {where}"
            raise KafkaCommandError(msg)
    if not partitions:
        msg = f"topic {topic!r} does not exist on Kafka at {settings.bootstrap_servers}"
        raise KafkaCommandError(msg)
    return [TopicPartition(topic, partition) for partition in sorted(partitions)]


async def active_members(admin: AIOKafkaAdminClient, group_id: str) -> int:
    """How many members the group has right now (0 for an empty or unknown group)."""
    [response] = await admin.describe_consumer_groups([group_id])
    groups = response.to_object()["groups"]
    return sum(len(g["members"]) for g in groups if g["group"] == group_id and not g["error_code"])

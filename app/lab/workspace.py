"""A lab run's own topics and consumer groups, named after the run and removed after it.

Experiments never touch the pipeline's `orders` topic or the `order-workers` group: every name
they use comes from here (`lab.<run>.<name>`), so a lab can run next to a live stack, and two
runs never see each other's records.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from app.operations.group_delete import delete_kafka_group
from app.operations.kafka_clients import (
    KafkaCommandError,
    admin_client,
    bounded,
    offsets_consumer,
)
from app.settings import Settings


@dataclass
class LabWorkspace:
    settings: Settings
    run_id: str
    topics: list[str] = field(default_factory=list)
    groups: set[str] = field(default_factory=set)

    def topic_name(self, name: str) -> str:
        return f"lab.{self.run_id}.{name}"

    def group(self, name: str) -> str:
        group = f"lab.{self.run_id}.{name}"
        self.groups.add(group)
        return group

    async def create_topic(self, name: str, partitions: int | None = None) -> str:
        """Create `lab.<run>.<name>` with the pipeline's replication settings; its full name."""
        kafka = self.settings.kafka
        topic = self.topic_name(name)
        new = NewTopic(
            topic,
            partitions or kafka.partitions,
            kafka.replication_factor,
            topic_configs={"min.insync.replicas": str(kafka.min_insync_replicas)},
        )
        async with admin_client(kafka) as admin:
            await bounded(kafka, f"creating topic {topic}", admin.create_topics([new]))
        self.topics.append(topic)
        await self._wait_for_leaders(topic, partitions or kafka.partitions)
        return topic

    async def _wait_for_leaders(self, topic: str, partitions: int) -> None:
        # A topic just created has no leader for a moment, and then a leader that still answers
        # NotLeaderForPartition to offset look-ups: clients started then log errors and retry,
        # which would distort the measurements. Wait until every partition answers one.
        kafka = self.settings.kafka
        wanted = [TopicPartition(topic, partition) for partition in range(partitions)]
        async with offsets_consumer(kafka) as consumer:
            for _ in range(100):
                with contextlib.suppress(KafkaError):
                    ends = await asyncio.wait_for(consumer.end_offsets(wanted), 1.0)
                    if len(ends) == partitions:
                        return
                await asyncio.sleep(0.1)
        msg = f"topic {topic}: its partitions have no leader after 10 s"
        raise KafkaCommandError(msg)

    async def remove(self) -> None:
        """Delete the run's topics and its groups' committed offsets (a group some member has
        not left yet is skipped: Kafka expires it with offsets.retention.minutes)."""
        kafka = self.settings.kafka
        async with contextlib.AsyncExitStack() as stack:
            with contextlib.suppress(Exception):  # cleaning up must not hide the run's result
                admin = await stack.enter_async_context(admin_client(kafka))
                if self.topics:
                    await bounded(kafka, "deleting lab topics", admin.delete_topics(self.topics))
                for group in sorted(self.groups):
                    with contextlib.suppress(Exception):
                        await bounded(kafka, f"deleting {group}", delete_kafka_group(admin, group))
        self.topics.clear()
        self.groups.clear()


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dt%H%M%S}-{secrets.token_hex(2)}"


@asynccontextmanager
async def lab_workspace(settings: Settings, keep: bool = False) -> AsyncIterator[LabWorkspace]:
    """Topics and groups for one run; the topics are deleted afterwards unless `keep`."""
    workspace = LabWorkspace(settings, new_run_id())
    try:
        yield workspace
    finally:
        if not keep:
            await workspace.remove()

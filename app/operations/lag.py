"""Per-partition lag of the worker group, from both sides of the commit.

PostgreSQL's positions are the truth; Kafka's committed offsets mirror them one step later.
Showing both tells an operator whether a difference is lag (both behind the log end) or a
mirror that has not caught up (PostgreSQL ahead of Kafka: harmless, it resumes from PostgreSQL).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.positions import read_positions
from app.operations.kafka_clients import bounded, offsets_consumer, topic_partitions
from app.settings import Settings


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    stored: int | None  # next offset in PostgreSQL (None: never processed)
    committed: int | None  # next offset in Kafka's group offsets
    log_end: int

    @property
    def lag(self) -> int:
        return self.log_end - (self.stored or 0)


async def group_lag(settings: Settings, engine: AsyncEngine) -> list[PartitionLag]:
    topic, group = settings.kafka.orders_topic, settings.worker.group_id
    kafka = settings.kafka
    async with offsets_consumer(kafka, group) as consumer:
        partitions = await topic_partitions(kafka, consumer, topic)
        consumer.assign(partitions)  # aiokafka reads committed offsets only for its assignment
        ends = await bounded(kafka, "reading log ends", consumer.end_offsets(partitions))
        committed = {
            tp.partition: await bounded(kafka, "reading group offsets", consumer.committed(tp))
            for tp in partitions
        }
    async with engine.connect() as connection:
        stored = await read_positions(connection, group, topic, [tp.partition for tp in partitions])
    return [
        PartitionLag(tp.partition, stored.get(tp.partition), committed[tp.partition], ends[tp])
        for tp in partitions
    ]

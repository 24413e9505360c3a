"""Per-partition lag of the worker group, from both sides of the commit.

PostgreSQL's positions are the truth; Kafka's committed offsets mirror them one step later.
Showing both tells an operator whether a difference is lag (both behind the log end) or a
mirror that has not caught up (PostgreSQL ahead of Kafka: harmless, it resumes from PostgreSQL).

For the status of each partition (app/lag_status.py) it also reads how long each stored position
has stood still (PostgreSQL's clock) and, for each lagging partition, when its first unprocessed
record was appended (the broker's clock: the topic stamps LogAppendTime), so that a partition
quiet for an hour that just received a record is not taken for one stuck for an hour.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.positions import read_position_ages
from app.operations.kafka_clients import bounded, offsets_consumer, topic_partitions
from app.settings import Settings

# How long one look at the first unprocessed records may take, all partitions together. Past it
# a partition's lag start is unknown (its status then counts from the position's last move).
FIRST_RECORD_BOUND_S = 3.0


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    stored: int | None  # next offset in PostgreSQL (None: never processed)
    committed: int | None  # next offset in Kafka's group offsets
    log_end: int  # last stable offset (what a read_committed worker can reach)
    owner: str | None = None  # the member that last moved the stored position
    idle_s: float | None = None  # since the stored position last moved (PostgreSQL's clock)
    lag_began_at: float | None = None  # epoch s: the first unprocessed record's append time

    @property
    def lag(self) -> int:
        # Kafka's log end is read before PostgreSQL's position: a position stored in between
        # may pass it. That is no lag, not a negative one.
        return max(0, self.log_end - (self.stored or 0))


async def group_lag(
    settings: Settings, engine: AsyncEngine, *, undated: Collection[int] = ()
) -> list[PartitionLag]:
    """Lag of every partition of the orders topic; `undated` lists partitions whose first
    unprocessed record need not be read (a watcher that already knows when their lag began)."""
    topic, group = settings.kafka.orders_topic, settings.worker.group_id
    kafka = settings.kafka
    async with offsets_consumer(
        kafka, group, auto_offset_reset="earliest", isolation_level="read_committed"
    ) as consumer:
        partitions = await topic_partitions(kafka, consumer, topic)
        consumer.assign(partitions)  # aiokafka reads committed offsets only for its assignment
        ends = await bounded(kafka, "reading log ends", consumer.end_offsets(partitions))
        committed = {
            tp.partition: await bounded(kafka, "reading group offsets", consumer.committed(tp))
            for tp in partitions
        }
        async with engine.connect() as connection:
            stored = await read_position_ages(
                connection, group, topic, [tp.partition for tp in partitions]
            )
        starts = {
            tp: stored[tp.partition].next_offset if tp.partition in stored else None
            for tp in partitions
            if tp.partition not in undated
            and ends[tp] > (stored[tp.partition].next_offset if tp.partition in stored else 0)
        }
        began = await _append_times(consumer, starts)
    rows = []
    for tp in partitions:
        position = stored.get(tp.partition)
        rows.append(
            PartitionLag(
                tp.partition,
                position.next_offset if position else None,
                committed[tp.partition],
                ends[tp],
                owner=position.owner if position else None,
                idle_s=position.idle_s if position else None,
                lag_began_at=began.get(tp.partition),
            )
        )
    return rows


async def _append_times(
    consumer: AIOKafkaConsumer, starts: Mapping[TopicPartition, int | None]
) -> dict[int, float]:
    """When the first record at or after each start was appended (epoch seconds), for the
    partitions that answer within FIRST_RECORD_BOUND_S. A start of None is the log's start."""
    if not starts:
        return {}
    consumer.assign(list(starts))  # only these: nothing is fetched for the others
    for tp, offset in starts.items():
        if offset is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, offset)
    found: dict[int, float] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FIRST_RECORD_BOUND_S
    # A partition that cannot be read (deleted records, an open transaction holding the last
    # stable offset, a refusal) simply stays undated: the status does not need it to exist.
    with contextlib.suppress(KafkaError):
        while len(found) < len(starts) and (left := deadline - loop.time()) > 0:
            fetched = await consumer.getmany(timeout_ms=int(left * 1000))
            for tp, records in fetched.items():
                if records and tp.partition not in found:
                    # Offsets with no visible record (markers, aborted records) are skipped, so
                    # this may be a little later than the true start: never earlier.
                    found[tp.partition] = records[0].timestamp / 1000
                    consumer.pause(tp)
    return found

"""The exact mode: the windows and the group's positions in one PostgreSQL transaction.

The course asks this of its Scenario 3 (financial transactions): "Manual offset management with
database transactions". Applied to analytics, a crash costs no accuracy: the worker's way of
storing orders (app/worker/batch_writer.py), with windows instead of orders.

Per batch, in ONE transaction:
1. lock the group's position of each partition of the batch (consumer_positions under
   ANALYTICS_GROUP_ID, app/db/positions.py) and check the fence: a partition counts only if its
   stored position is exactly where the batch begins; otherwise another member (or a newer
   incarnation of this one) has moved on, and this batch's part of it is dropped;
2. add the orders to their windows, and move the partitions' watermarks;
3. move each position to the end of the batch.
A kill -9 before COMMIT leaves none of it, and the next owner redoes the batch from the stored
position; after COMMIT, all of it. Kafka's committed offsets only mirror the positions, for
the tools: that commit comes after the COMMIT, bounded on its own (WORKER_COMMIT_TIMEOUT_S),
outside the batch's timeout, so a slow broker never makes a stored batch count as failed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from app.analytics.batch import CountedBatch
from app.analytics.member import AnalyticsMember
from app.db.positions import PartitionSpan, advance_positions, claim_partitions, read_positions
from app.settings import Settings
from app.worker.out_of_range import recover_out_of_range

log = logging.getLogger(__name__)

NAME = "exact"


def consumer_options(settings: Settings) -> dict[str, Any]:
    return {"enable_auto_commit": False}


async def position(
    member: AnalyticsMember, partitions: list[TopicPartition]
) -> list[TopicPartition]:
    """Each partition from its position in PostgreSQL (returned); one never stored starts at
    Kafka's committed offset (the mirror), else at the log's beginning."""
    async with member.engine.connect() as connection:
        stored = await read_positions(
            connection, member.group, member.topic, [tp.partition for tp in partitions]
        )
    positioned = [tp for tp in partitions if tp.partition in stored]
    for tp in positioned:
        member.positions.seek(tp, stored[tp.partition])
    return positioned


async def store(member: AnalyticsMember, batch: CountedBatch) -> CountedBatch:
    scope = member.scope
    ids = {"group_id": scope.group_id, "topic": scope.topic, "owner": scope.owner}
    fenced: dict[int, int] = {}
    async with member.transaction() as connection:
        if batch.spans:
            stored = await claim_partitions(connection, **ids, spans=batch.spans)
            fenced = {
                span.partition: stored[span.partition]
                for span in batch.spans
                if stored[span.partition] != span.start
            }
        batch = await member.add_to_windows(connection, batch.fenced_off(fenced))
        await advance_positions(connection, **ids, spans=batch.spans)
    await _mirror(member, batch.spans)
    for partition, stored_at in fenced.items():
        await _resume(member, partition, stored_at)
    return batch


async def _mirror(member: AnalyticsMember, spans: list[PartitionSpan]) -> None:
    """Kafka's committed offsets follow PostgreSQL's positions (for `kafka-consumer-groups`);
    best effort: the next owner starts from PostgreSQL."""
    if not spans:
        return
    offsets = {
        TopicPartition(member.topic, s.partition): OffsetAndMetadata(s.end, "") for s in spans
    }
    try:
        await asyncio.wait_for(
            member.consumer.commit(offsets), member.settings.worker.commit_timeout_s
        )
    except (TimeoutError, KafkaError) as exc:
        log.warning("Kafka commit failed (%r); positions are safe in PostgreSQL", exc)


async def _resume(member: AnalyticsMember, partition: int, stored_at: int) -> None:
    """Fenced: fetch the partition again from its stored position. One the log no longer holds
    (retention deleted it: aiokafka would jump to the log's start, and every batch would then
    be fenced) is moved on, on the record, as the worker does (app.worker.out_of_range)."""
    tp = TopicPartition(member.topic, partition)
    log.warning(
        "partition %d fenced: stored position %d; fetching from there", partition, stored_at
    )
    resume_at = stored_at
    try:
        async with asyncio.timeout(member.settings.worker.commit_timeout_s):
            resume_at = await recover_out_of_range(
                member.consumer, member.engine, member.scope, tp, stored_at
            )
    except Exception as exc:  # the next batch is fenced again, and this is tried again
        log.warning("partition %d: could not check its log's range (%r)", partition, exc)
    if tp in member.consumer.assignment():
        member.positions.seek(tp, resume_at)

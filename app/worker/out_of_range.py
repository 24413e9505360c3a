"""A stored position the log no longer has: decided explicitly, on the record, never silently.

- Below the log's start: the records in between were deleted (retention, `delete_records`)
  before this group processed them. They cannot be had any more; the range is recorded in
  `skipped_offsets` (what `orders skipped` lists) and the position moves to the log's start, in
  one transaction, under the position's lock.
- Beyond the log's end: the partition's log is shorter than what was processed (the topic was
  deleted and created again). Everything now in the log is unknown to this group, so the
  position moves back to the log's start: orders already stored are absorbed by their ids.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import quarantine
from app.db.positions import PartitionSpan, advance_positions, claim_partitions
from app.worker.batch_writer import Scope

log = logging.getLogger(__name__)

DELETED_REASON = "deleted before it was processed (retention or delete_records)"
# A new leader's high watermark can trail the old one for a moment: look again before
# deciding that the log is shorter than what was processed.
_RECHECK_S = 1.0


async def recover_out_of_range(
    consumer: AIOKafkaConsumer,
    engine: AsyncEngine,
    scope: Scope,
    tp: TopicPartition,
    offset: int,
) -> int:
    """Handle `offset` being out of `tp`'s range; return the offset to resume at."""
    begin, end = await _log_range(consumer, tp)
    if offset > end:
        await asyncio.sleep(_RECHECK_S)
        begin, end = await _log_range(consumer, tp)
    if begin <= offset <= end:
        return offset  # back in range: nothing to decide
    ids = {"group_id": scope.group_id, "topic": scope.topic, "owner": scope.owner}
    async with engine.begin() as connection:
        span = PartitionSpan(tp.partition, offset, begin)
        stored = (await claim_partitions(connection, **ids, spans=[span]))[tp.partition]
        if stored != offset:
            return stored  # another member has moved it since: resume where it says
        if offset < begin:
            log.error(
                "partition %d: offsets %d to %d were %s; %d record(s) skipped, resuming at %d",
                tp.partition,
                offset,
                begin - 1,
                DELETED_REASON,
                begin - offset,
                begin,
            )
            await quarantine.record_skipped(
                connection,
                group_id=scope.group_id,
                topic=scope.topic,
                partition=tp.partition,
                from_offset=offset,
                to_offset=begin,
                reason=DELETED_REASON,
                worker=scope.owner,
            )
        else:
            log.error(
                "partition %d: stored position %d is beyond the log's end %d (topic deleted "
                "and created again?); resuming at the log's start %d",
                tp.partition,
                offset,
                end,
                begin,
            )
        await advance_positions(connection, **ids, spans=[span])
    return begin


async def _log_range(consumer: AIOKafkaConsumer, tp: TopicPartition) -> tuple[int, int]:
    begin = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]
    return int(begin), int(end)

"""One open record batch per partition, filled by concurrent requests, handed to aiokafka whole.

Why by hand: aiokafka's per-record `send()` costs ~13 us of CPU per record in the API under load
(a chain of coroutines, a partitioner call, and a future plus a RecordMetadata per record), more
than anything else that accepting an order adds to validating it. aiokafka's batch API
(`create_batch()` / `send_batch()`) takes a batch the caller built and returns one future for the
whole batch; no library fills such batches from many concurrent callers, so this module does.

How: a record joins its partition's open batch (a C-level append) and gets its own future. A
flusher task per busy partition hands batches over one at a time; aiokafka keeps one queued
batch per partition, so `send_batch` waits while the previous batch waits for its produce
request. Records that arrive meanwhile share the next batch: batches grow with load, with no
linger delay. When a batch is acknowledged, each record's future gets the batch's base offset
plus the record's place in it.

Ordering: one partition's records are appended in call order, its batches are handed over in
order by its single flusher, and the idempotent producer keeps them in order on the wire.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import RecordMetadata

if TYPE_CHECKING:
    from app.api.metrics import ProducerMetrics


@functools.lru_cache(maxsize=65_536)
def partition_for(key: bytes, partition_count: int) -> int:
    """The partition Kafka's Java client picks for `key` (murmur2), remembered per key.

    aiokafka's murmur2 is pure Python (~4 us per customer id); customers order again and again.
    """
    partitions = list(range(partition_count))
    return int(DefaultPartitioner()(key, partitions, partitions))


def _closed_error() -> Exception:
    error: Exception = KafkaConnectionError("the producer was closed; the record was not sent")
    return error


class Delivery(NamedTuple):
    """Where the broker put one record, and its timestamp (append time on LogAppendTime topics)."""

    partition: int
    offset: int  # -1 when the broker did not say (a retried batch it already had)
    timestamp: int
    timestamp_type: int


@dataclass(eq=False)
class _OpenBatch:
    builder: BatchBuilder
    # (the record's future, its offset within the batch)
    records: list[tuple[asyncio.Future[Delivery], int]] = field(default_factory=list)

    def unanswered(self) -> bool:
        """Whether anyone still waits for this batch (each record's wait has a deadline)."""
        return any(not future.done() for future, _ in self.records)

    def fail(self, exc: BaseException) -> None:
        for future, _ in self.records:
            if not future.done():
                future.set_exception(exc)

    def settle(self, acknowledgement: asyncio.Future[RecordMetadata]) -> None:
        """Done-callback of aiokafka's batch future: answer each record."""
        if acknowledgement.cancelled():
            self.fail(KafkaConnectionError("the batch was cancelled before delivery"))
            return
        exc = acknowledgement.exception()
        if exc is not None:
            self.fail(exc)
            return
        batch = acknowledgement.result()
        for future, index in self.records:
            if not future.done():
                offset = batch.offset + index if batch.offset >= 0 else -1
                future.set_result(
                    Delivery(batch.partition, offset, batch.timestamp, batch.timestamp_type)
                )


def _count_acknowledged(
    metrics: ProducerMetrics,
    partition: int,
    batch: _OpenBatch,
    acknowledgement: asyncio.Future[RecordMetadata],
) -> None:
    if not acknowledgement.cancelled() and acknowledgement.exception() is None:
        metrics.acknowledged(partition, len(batch.records))


class PartitionBatches:
    """Batches records for one topic of one producer; see the module docstring."""

    def __init__(
        self, producer: AIOKafkaProducer, topic: str, metrics: ProducerMetrics | None = None
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._metrics = metrics  # None: nothing counted (METRICS_ENABLED=false)
        self._queues: dict[int, deque[_OpenBatch]] = {}
        self._flushers: dict[int, asyncio.Task[None]] = {}
        self._closed: BaseException | None = None

    def append(
        self, partition: int, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> asyncio.Future[Delivery]:
        """Add a record to `partition`'s open batch; the future resolves once it is acknowledged.

        The caller bounds the wait: a future that is already done when its batch's turn comes
        (every record of it answered "not accepted") keeps that batch off the wire.
        """
        if self._closed is not None:
            raise self._closed
        queue = self._queues.setdefault(partition, deque())
        batch = queue[-1] if queue else None
        placed = None
        if batch is not None:
            placed = batch.builder.append(timestamp=None, key=key, value=value, headers=headers)
        if placed is None:  # no open batch, or it is full: a new one (a first record always fits)
            batch = _OpenBatch(self._producer.create_batch())
            queue.append(batch)
            placed = batch.builder.append(timestamp=None, key=key, value=value, headers=headers)
        assert batch is not None
        assert placed is not None
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        batch.records.append((future, placed.offset))
        if partition not in self._flushers:
            self._flushers[partition] = asyncio.create_task(
                self._flush(partition, queue), name=f"flush-{self._topic}-{partition}"
            )
        return future

    async def close(self) -> None:
        """Fail every record not yet handed to aiokafka, and stop the flushers."""
        self._closed = _closed_error()
        for flusher in list(self._flushers.values()):
            flusher.cancel()
        await asyncio.gather(*self._flushers.values(), return_exceptions=True)
        for queue in self._queues.values():
            while queue:
                queue.popleft().fail(self._closed)

    async def _flush(self, partition: int, queue: deque[_OpenBatch]) -> None:
        # Started by the first append; ends when its partition has nothing left to hand over.
        try:
            while queue:
                batch = queue.popleft()
                if not batch.unanswered():
                    continue  # every record was answered 503: never let it reach the log
                metrics = self._metrics
                if metrics is not None:
                    metrics.batch_records.observe(len(batch.records))
                try:
                    acknowledgement = await self._producer.send_batch(
                        batch.builder, self._topic, partition=partition
                    )
                except BaseException as exc:
                    batch.fail(exc if isinstance(exc, Exception) else _closed_error())
                    raise
                acknowledgement.add_done_callback(batch.settle)
                if metrics is not None:
                    # Counted per batch, not per record: all of its records are in the log,
                    # those already answered 503 included (the broker has them all the same).
                    count = functools.partial(_count_acknowledged, metrics, partition, batch)
                    acknowledgement.add_done_callback(count)
        except Exception as exc:
            # aiokafka refused the hand-over (closed, failed, or its queue stayed full):
            # what is still queued behind it cannot keep its order, so it fails too.
            while queue:
                queue.popleft().fail(exc)
        finally:
            del self._flushers[partition]

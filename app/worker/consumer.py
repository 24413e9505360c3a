"""One member of the `order-workers` group: fetch a batch, store it, then commit it.

The order of events for every batch is the whole design:

    getmany -> ONE PostgreSQL transaction (lock the positions, check the fence, dead-letter the
    poison (acked), insert the orders, move the positions) -> COMMIT -> Kafka commit of exactly
    the processed offsets (last + 1)

A crash anywhere before the PostgreSQL COMMIT redoes the batch; a crash after it redoes nothing,
because the positions in PostgreSQL say where to resume and order ids absorb redeliveries.

aiokafka pitfalls this module designs around:
- `commit()` without arguments commits the *fetched* position, which may be ahead of what was
  processed: every commit here names its offsets;
- rebalance callbacks run concurrently with this loop: a lock makes a revocation wait for the
  in-flight batch, and each batch keeps only the partitions still assigned when it starts;
- a paused consumer must keep calling `getmany`, or it leaves the group (max.poll.interval.ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app import contract, dlq_headers
from app.db.positions import PartitionSpan, claim_partitions, read_positions
from app.errors import PoisonRecordError
from app.settings import Settings
from app.worker import faults
from app.worker.dlq_publisher import DeadLetterPublisher
from app.worker.order_store import IncomingOrder, store_batch

log = logging.getLogger(__name__)

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
Batch: TypeAlias = dict[TopicPartition, list[Record]]

# Failures that say "try the same batch again later", never "skip it".
TRANSIENT_ERRORS = (SQLAlchemyError, DBAPIError, OSError, TimeoutError, KafkaError)


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class WorkerStats:
    batches: int = 0
    records: int = 0
    inserted: int = 0
    dead_lettered: int = 0
    expired: int = 0
    fenced: int = 0
    retries: int = 0
    positions: dict[int, int] = field(default_factory=dict)


class OrderWorker:
    def __init__(self, settings: Settings, engine: AsyncEngine, name: str | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.name = name or worker_name()
        self.stats = WorkerStats()
        self._topic = settings.kafka.orders_topic
        self._group = settings.worker.group_id
        self._in_flight = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._consumer = self._build_consumer()
        self._dead_letters = self._build_dead_letters()

    def reset_clients(self) -> None:
        """Fresh Kafka clients after a failed start (aiokafka clients cannot be restarted)."""
        self._consumer = self._build_consumer()
        self._dead_letters = self._build_dead_letters()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _build_dead_letters(self) -> DeadLetterPublisher:
        return DeadLetterPublisher(
            self.settings.kafka, self.name, self.settings.worker.commit_timeout_s
        )

    def _build_consumer(self) -> AIOKafkaConsumer:
        kafka, worker = self.settings.kafka, self.settings.worker
        return AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-worker-{self.name}",
            group_id=worker.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Never see records of aborted transactions (tools or future producers may use them).
            isolation_level="read_committed",
            session_timeout_ms=worker.session_timeout_ms,
            heartbeat_interval_ms=worker.heartbeat_interval_ms,
            max_poll_interval_ms=worker.max_poll_interval_ms,
            rebalance_timeout_ms=worker.rebalance_timeout_ms,
            max_poll_records=worker.max_records,
            request_timeout_ms=kafka.request_timeout_ms,
        )

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._dead_letters.start()
        self._consumer.subscribe([self._topic], listener=_Rebalance(self))
        await self._consumer.start()
        log.info("worker %s joined group %s on topic %s", self.name, self._group, self._topic)

    def request_stop(self) -> None:
        """Finish the batch in flight, commit it, then leave the group."""
        self._stopping.set()

    async def close(self) -> None:
        timeout = self.settings.worker.commit_timeout_s
        try:
            # Leaving the group now hands the partitions over without a session timeout.
            await asyncio.wait_for(self._consumer.stop(), timeout)
        except (TimeoutError, KafkaError) as exc:
            log.warning("consumer did not leave the group cleanly: %r", exc)
        await self._dead_letters.stop()

    async def run(self) -> None:
        """Process batches until `request_stop()`.

        Two batches overlap: while batch N's transaction runs in PostgreSQL, batch N+1 is fetched
        and parsed here. N+1 is only written once N has committed, so per-partition order and
        the fence are exactly as if the batches ran one after the other.
        """
        backoff = self.settings.worker.retry_backoff_initial_s
        storing: asyncio.Task[None] | None = None
        stored_batch: Batch = {}
        try:
            while not self._stopping.is_set():
                batch = await self._fetch()
                prepared = await _prepare(batch) if batch else None
                if storing is not None:
                    failure = await _outcome(storing)
                    storing = None
                    if failure is not None:
                        # Both the failed batch and the one fetched behind it are fetched again.
                        self.stats.retries += 1
                        log.warning(
                            "batch failed (%r); retrying from its start in %.1fs", failure, backoff
                        )
                        await self._back_off([stored_batch, batch], backoff)
                        backoff = min(backoff * 2, self.settings.worker.retry_backoff_max_s)
                        continue
                    backoff = self.settings.worker.retry_backoff_initial_s
                if prepared is not None:
                    storing = asyncio.create_task(self._store_in_time(prepared))
                    stored_batch = batch
        finally:
            # However the loop ends, the batch being stored finishes (or fails) before we leave.
            if storing is not None:
                failure = await _outcome(storing)
                if failure is not None:
                    log.warning("last batch failed (%r); the next owner redoes it", failure)

    async def _fetch(self) -> Batch:
        """getmany, unless a stop is requested first: getmany waits without bound while the
        group cannot finish a rebalance, and SIGTERM must still drain and leave."""
        fetch = asyncio.ensure_future(
            self._consumer.getmany(
                timeout_ms=self.settings.worker.fetch_timeout_ms,
                max_records=self.settings.worker.max_records,
            )
        )
        stop = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({fetch, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not fetch.done():
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetch
            return {}
        batch: Batch = fetch.result()
        return batch

    # --- one batch -------------------------------------------------------------------------

    async def _store_in_time(self, prepared: PreparedBatch) -> None:
        await asyncio.wait_for(self._store(prepared), self.settings.worker.batch_timeout_s)

    async def _store(self, prepared: PreparedBatch) -> None:
        async with self._in_flight:
            # A rebalance may have revoked partitions since getmany returned: drop their records.
            prepared = prepared.only(self._consumer.assignment())
            if not prepared.spans:
                return
            faults.hit("before_db_transaction")
            scope = {"group_id": self._group, "topic": self._topic, "owner": self.name}
            async with self.engine.begin() as connection:
                stored = await claim_partitions(connection, **scope, spans=prepared.spans)
                fenced = {
                    s.partition: stored[s.partition]
                    for s in prepared.spans
                    if stored[s.partition] != s.start
                }
                # Dead letters go out while this member holds the positions' locks, and only
                # for partitions it still owns: a fenced batch dead-letters nothing. (A crash
                # between their acks and the COMMIT below can still send one twice.)
                poison = [(r, e) for r, e in prepared.poison if r.partition not in fenced]
                if poison:
                    await self._dead_letters.publish(poison)
                    faults.hit("after_dead_letter")
                result = await store_batch(
                    connection,
                    **scope,
                    spans=prepared.spans,
                    orders=prepared.orders,
                    fenced=fenced,
                )
                faults.hit("inside_db_transaction")
            faults.hit("after_db_commit")
            for partition, position in result.fenced.items():
                # Someone else moved this partition on: whatever we fetched is not ours to write.
                log.warning(
                    "partition %d fenced: stored position %d, batch began at %d; seeking there",
                    partition,
                    position,
                    next(s.start for s in prepared.spans if s.partition == partition),
                )
                self._consumer.seek(TopicPartition(self._topic, partition), position)
            done = {
                TopicPartition(self._topic, s.partition): OffsetAndMetadata(s.end, "")
                for s in prepared.spans
                if s.partition not in result.fenced
            }
            await self._commit_to_kafka(done)
            self._count(prepared, result.inserted, len(result.fenced))

    async def _commit_to_kafka(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """Mirror the stored positions into the group's offsets, for lag tools; best effort."""
        if not offsets:
            return
        try:
            await asyncio.wait_for(
                self._consumer.commit(offsets), self.settings.worker.commit_timeout_s
            )
        except (TimeoutError, KafkaError) as exc:
            # PostgreSQL already holds the truth; the next owner seeks from there.
            log.warning("Kafka commit failed (%r); positions are safe in PostgreSQL", exc)

    async def _back_off(self, batches: list[Batch], delay: float) -> None:
        """Rewind to the first unstored record, pause fetching, and keep polling (so we stay in
        the group) until the delay is over."""
        rewind: dict[TopicPartition, int] = {}
        for batch in batches:
            for tp, records in batch.items():
                if records:
                    rewind[tp] = min(rewind.get(tp, records[0].offset), records[0].offset)
        assigned = self._consumer.assignment()
        for tp, offset in rewind.items():
            if tp in assigned:
                self._consumer.seek(tp, offset)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + delay
            while not self._stopping.is_set() and loop.time() < deadline:
                # Pause again each round: a rebalance meanwhile may have assigned new partitions.
                self._consumer.pause(*self._consumer.assignment())
                remaining_ms = max(1, int((deadline - loop.time()) * 1000))
                stray = await self._consumer.getmany(timeout_ms=min(remaining_ms, 500))
                for tp, records in stray.items():  # fetched before the pause took effect
                    if records:
                        self._consumer.seek(tp, records[0].offset)
        finally:
            self._consumer.resume(*self._consumer.assignment())

    def _count(self, prepared: PreparedBatch, inserted: int, fenced: int) -> None:
        self.stats.batches += 1
        self.stats.records += prepared.size
        self.stats.inserted += inserted
        self.stats.dead_lettered += len(prepared.poison)
        self.stats.expired += prepared.expired
        self.stats.fenced += fenced
        for span in prepared.spans:
            self.stats.positions[span.partition] = span.end

    # --- rebalancing -----------------------------------------------------------------------

    async def _on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        try:
            async with asyncio.timeout(self.settings.worker.batch_timeout_s):
                async with self._in_flight:
                    pass  # the in-flight batch has committed (or failed and will be redone)
        except TimeoutError:
            log.warning("in-flight batch did not finish before the revocation; the fence holds")
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    async def _on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        mine = [tp for tp in assigned if tp.topic == self._topic]
        if not mine:
            return
        try:
            async with asyncio.timeout(self.settings.worker.commit_timeout_s):
                async with self.engine.connect() as connection:
                    stored = await read_positions(
                        connection, self._group, self._topic, [tp.partition for tp in mine]
                    )
        except TRANSIENT_ERRORS as exc:
            # Start from Kafka's committed offsets instead; the fence corrects any difference.
            log.warning("could not read positions from PostgreSQL (%r)", exc)
            stored = {}
        for tp in mine:
            if tp.partition in stored:
                self._consumer.seek(tp, stored[tp.partition])
        log.info(
            "partitions assigned: %s (resuming at %s)",
            sorted(tp.partition for tp in mine),
            {p: stored.get(p, "committed") for p in sorted(tp.partition for tp in mine)},
        )


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: OrderWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._worker._on_assigned(assigned)


@dataclass(frozen=True)
class PreparedBatch:
    """A fetched batch, parsed: its orders, its poison records, and the span of each partition."""

    orders: list[IncomingOrder]
    poison: list[tuple[Record, Exception]]
    spans: list[PartitionSpan]
    size: int
    expired: int = 0

    def only(self, assigned: set[TopicPartition]) -> PreparedBatch:
        """The part of the batch on partitions still assigned to this member."""
        partitions = {tp.partition for tp in assigned}
        if all(span.partition in partitions for span in self.spans):
            return self
        spans = [span for span in self.spans if span.partition in partitions]
        return PreparedBatch(
            orders=[order for order in self.orders if order.partition in partitions],
            poison=[(r, e) for r, e in self.poison if r.partition in partitions],
            spans=spans,
            size=sum(span.end - span.start for span in spans),
            expired=self.expired,
        )


# Parsing yields to the event loop this often, so that the batch being stored meanwhile can send
# its next statement instead of waiting for the whole parse (the loop has one thread).
_PARSE_SLICE = 100


async def _prepare(batch: Batch) -> PreparedBatch:
    orders: list[IncomingOrder] = []
    poison: list[tuple[Record, Exception]] = []
    expired: list[contract.OrderEnvelope] = []
    spans: list[PartitionSpan] = []
    for records in batch.values():
        if not records:
            continue
        spans.append(PartitionSpan(records[0].partition, records[0].offset, records[-1].offset + 1))
        for index, record in enumerate(records):
            if index % _PARSE_SLICE == 0:
                await asyncio.sleep(0)
            try:
                envelope = contract.decode(record.value)
                in_time = contract.appended_in_time(envelope, *_append_time(record))
            except PoisonRecordError as exc:
                poison.append((record, exc))
                continue
            except (ValueError, OverflowError) as exc:  # e.g. a deadline in year 1
                poison.append((record, PoisonRecordError(f"unusable accept_by: {exc}")))
                continue
            if not in_time:
                # The API answered 503 for it (it reached the log too late): never processed.
                expired.append(envelope)
                continue
            orders.append(IncomingOrder(envelope, record.partition, record.offset))
    for envelope in expired:
        log.warning(
            "order %s of customer %s reached Kafka after its acceptance deadline %s "
            "(the client was answered 503): not processed",
            envelope.order_id,
            envelope.customer_id,
            envelope.accept_by.isoformat(),
        )
    return PreparedBatch(orders, poison, spans, sum(len(r) for r in batch.values()), len(expired))


def _append_time(record: Record) -> tuple[int, int]:
    """When the broker first took this record, and by whose clock.

    A dead letter that an operator sent back (`orders dlq replay`) carries the append time of its
    first journey; the replay's own time would make every replayed order look late.
    """
    headers = dict(record.headers or ())
    if dlq_headers.H_REPLAYED_FROM in headers and dlq_headers.H_TIMESTAMP in headers:
        timestamp_type = headers.get(dlq_headers.H_TIMESTAMP_TYPE, b"0")
        return int(headers[dlq_headers.H_TIMESTAMP]), int(timestamp_type)
    return record.timestamp, record.timestamp_type


async def _outcome(task: asyncio.Task[None]) -> BaseException | None:
    """Wait for a batch to be stored; a transient failure is returned, anything else raised."""
    try:
        await task
    except TRANSIENT_ERRORS as exc:
        return exc
    return None


async def stop_quietly(worker: OrderWorker) -> None:
    with contextlib.suppress(Exception):
        await worker.close()

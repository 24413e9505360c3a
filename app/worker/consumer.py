"""One member of the `order-workers` group: fetch a batch, store it, then commit it.

The order of events for every batch is the whole design:

    getmany -> ONE PostgreSQL transaction (app.worker.batch_writer) -> COMMIT
            -> Kafka commit of exactly the processed offsets (the span's end)

A crash anywhere before the PostgreSQL COMMIT redoes the batch; a crash after it redoes nothing,
because the positions in PostgreSQL say where to resume and order ids absorb redeliveries.
What a failure means (retry, or isolate a record) is decided in app.worker.failures alone.

aiokafka pitfalls this module designs around:
- `commit()` without arguments commits the *fetched* position, which may be ahead of what was
  processed: every commit here names its offsets;
- rebalance callbacks run concurrently with this loop: a lock makes a revocation wait for the
  in-flight batch, and each batch keeps only the partitions still assigned when it starts;
- a paused consumer must keep calling `getmany`, or it leaves the group (max.poll.interval.ms);
- `auto_offset_reset` would silently jump to the log's start or end when a position falls out
  of range: it is off ("none"), and an out-of-range position is handled here, on the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.ext.asyncio import AsyncEngine

from app import tracing
from app.db.positions import read_positions
from app.group_member_options import group_member_options
from app.settings import Settings
from app.worker import faults, records
from app.worker.batch_writer import BatchOutcome, BatchWriter, Scope
from app.worker.conditions import Conditions
from app.worker.dlq_publisher import DeadLetterPublisher
from app.worker.failures import Verdict, classify, describe
from app.worker.fetch_positions import Batch, Bounds, FetchPositions
from app.worker.metrics import NoMetrics
from app.worker.out_of_range import recover_out_of_range
from app.worker.records import PreparedBatch

log = logging.getLogger(__name__)

# A fetch is answered once this many bytes are there, or after FETCH_MAX_WAIT_MS. aiokafka's
# default (1 byte) answers at once with whatever one produce request just appended, a few
# records: every batch then pays its fixed costs (a transaction of five statements, a Kafka
# commit, a fetch request) for a handful of orders. `make bench-e2e` paced at ~450 orders/s
# (1 API, 2 workers, alternating runs): the workers' CPU per stored order fell from 1,090-1,390
# to ~385 us, PostgreSQL's from 310-360 to ~110 us, the broker's from ~350 to 180-200 us
# (README, "End to end, measured"). The cost: up to FETCH_MAX_WAIT_MS of latency when fewer
# than FETCH_MIN_BYTES arrive meanwhile (end-to-end p50 +10-20 ms at that rate; 100 ms saved a
# little more CPU for +40 ms, 20 ms half as much for nothing visible).
FETCH_MIN_BYTES = 32 * 1024
FETCH_MAX_WAIT_MS = 50


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class WorkerStats:
    batches: int = 0
    records: int = 0
    inserted: int = 0
    dead_lettered: int = 0
    quarantined: int = 0
    skipped_offsets: int = 0
    expired: int = 0
    fenced: int = 0
    retries: int = 0
    positions: dict[int, int] = field(default_factory=dict)


class OrderWorker:
    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        name: str | None = None,
        tracer_provider: TracerProvider | None = None,
        metrics: NoMetrics | None = None,
    ) -> None:
        self.settings = settings
        # Prometheus metrics (app.worker.metrics); the no-op kind unless the caller gives some.
        self.metrics = metrics or NoMetrics()
        # What may be holding partitions back right now, for the stall detector's log lines.
        self.conditions = Conditions()
        self.joined = False  # a first assignment arrived (readiness)
        # Tracing (app.tracing): the given provider (tests), else OTEL_*; off by default (None).
        self._tracer = tracing.tracer_of(
            tracer_provider
            or tracing.from_environment(
                tracing.WORKER_SERVICE, max_links=settings.worker.max_records
            )
        )
        self.engine = engine
        self.name = name or worker_name()
        self.stats = WorkerStats()
        self._topic = settings.kafka.orders_topic
        self._group = settings.worker.group_id
        self._in_flight = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._unreadable = 0  # fetches in a row that failed on a record (for the back-off)
        # Partitions _on_assigned has positioned (or tried to), since they were assigned.
        self._positioned_on_assignment: set[TopicPartition] = set()
        self._held: set[TopicPartition] = set()  # paused by the block fault point (faults.py)
        # The orders partitions this member owns: emptied of revoked ones when the revocation
        # begins. The consumer's assignment() still lists them until the next assignment arrives,
        # and the stall detector must not judge (nor report) partitions we already gave up.
        self._owned: set[TopicPartition] = set()
        self.reset_clients()

    def reset_clients(self) -> None:
        """Fresh Kafka clients (aiokafka clients cannot be restarted after a failed start)."""
        self._consumer = self._build_consumer()
        self._owned = set()  # a fresh consumer owns nothing until it is assigned partitions
        self._positions = FetchPositions(self._consumer)
        self._dead_letters = DeadLetterPublisher(
            self.settings.kafka, self.name, self.settings.worker.commit_timeout_s
        )
        self._writer = BatchWriter(
            self.engine,
            self._dead_letters,
            Scope(self._group, self._topic, self.name),
            self.settings.worker.dlq_unreachable_quarantine_s,
        )

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _build_consumer(self) -> AIOKafkaConsumer:
        kafka, worker = self.settings.kafka, self.settings.worker
        return AIOKafkaConsumer(
            client_id=f"{kafka.client_id}-worker-{self.name}",
            group_id=worker.group_id,
            enable_auto_commit=False,
            # Never jump silently: where to start is decided in _on_assigned, and a position
            # out of range is handled in _fetch (see app.worker.out_of_range).
            auto_offset_reset="none",
            # Never see records of aborted transactions (tools or future producers may use them).
            isolation_level="read_committed",
            max_poll_records=worker.max_records,
            # Let the broker gather a batch worth storing (see FETCH_MIN_BYTES).
            fetch_min_bytes=FETCH_MIN_BYTES,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            **group_member_options(self.settings),
        )

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._dead_letters.start()
        self._consumer.subscribe([self._topic], listener=_Rebalance(self))
        await self._consumer.start()
        log.info("worker %s joined group %s on topic %s", self.name, self._group, self._topic)

    def owned_partitions(self) -> list[TopicPartition]:
        """The partitions of the orders topic this member owns now."""
        return sorted(self._owned, key=lambda tp: tp.partition)

    async def log_ends(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Each partition's log end; under read_committed, its last stable offset."""
        ends: dict[TopicPartition, int] = await self._consumer.end_offsets(partitions)
        return ends

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
        stored: PreparedBatch | None = None
        try:
            while not self._stopping.is_set():
                batch, bounds = await self._fetch()
                if faults.BLOCK_PARTITION is not None:
                    batch, bounds = self._hold_back(faults.BLOCK_PARTITION, batch, bounds)
                self.metrics.fetched(batch)
                if not batch and not bounds and storing is None:
                    # Idle: make sure no offsets were passed unaccounted (fetch_positions).
                    for tp in self._positions.reconcile():
                        log.info(
                            "partition %d: fetching again from where its batches ended",
                            tp.partition,
                        )
                prepared = await records.prepare(batch, bounds) if batch or bounds else None
                if storing is not None:
                    failure = await _outcome(storing)
                    storing = None
                    if failure is not None:
                        # Both the failed batch and the one fetched behind it are fetched again.
                        self.stats.retries += 1
                        self.metrics.batch_retried()
                        log.warning(
                            "batch failed (%r); retrying from its start in %.1fs", failure, backoff
                        )
                        self.conditions.note(
                            "batch",
                            f"retrying a failed batch ({describe(failure) or repr(failure)}); "
                            f"paused for a back-off of {backoff:.1f}s",
                        )
                        await self._back_off([stored, prepared], backoff)
                        backoff = min(backoff * 2, self.settings.worker.retry_backoff_max_s)
                        continue
                    backoff = self.settings.worker.retry_backoff_initial_s
                    self.conditions.clear("batch")
                if prepared is not None and prepared.spans:
                    storing = asyncio.create_task(self._store_in_time(prepared))
                    stored = prepared
        finally:
            # However the loop ends, the batch being stored finishes (or fails) before we leave.
            if storing is not None:
                failure = await _outcome(storing)
                if failure is not None:
                    log.warning("last batch failed (%r); the next owner redoes it", failure)

    async def _fetch(self) -> tuple[Batch, Bounds]:
        """getmany, unless a stop is requested first: getmany waits without bound while the
        group cannot finish a rebalance, and SIGTERM must still drain and leave."""
        try:
            fetched = await self._positions.getmany_unless(
                self._stopping,
                timeout_ms=self.settings.worker.fetch_timeout_ms,
                max_records=self.settings.worker.max_records,
            )
        except OffsetOutOfRangeError as exc:
            await self._recover(exc)
        except NoOffsetForPartitionError as exc:
            # aiokafka looks for a committed offset as soon as a partition is assigned, while
            # _on_assigned is still positioning it: leave those to it; position only the ones
            # it has finished with and could not position.
            unpositioned = [
                tp
                for tp in exc.args
                if tp in self._positioned_on_assignment and not self._positions.has_position(tp)
            ]
            if unpositioned:
                log.warning("no position for %s; positioning from Kafka", unpositioned)
                with contextlib.suppress(KafkaError, TimeoutError):
                    async with asyncio.timeout(self.settings.worker.commit_timeout_s):
                        await self._position_from_kafka(unpositioned)
        except Exception as exc:
            await self._fetch_failed(exc)
        else:
            self._unreadable = 0
            self.conditions.clear("fetch")
            return fetched
        return {}, {}

    async def _fetch_failed(self, exc: Exception) -> None:
        """A fetch that raised: never a crash, never a skipped record.

        A fetch can raise half-way: records of other partitions already taken from the buffer,
        and a record iterator left broken, which aiokafka would later step past as if its
        records had been returned. So every partition first goes back to where its batches
        ended (a seek also drops what aiokafka buffered for it). Then: transient (the broker
        away), fetch again; anything else is a record aiokafka cannot hand over (a header name
        that is not UTF-8: its C decoder raises for the whole fetch), and the member backs
        off, loudly, until an operator removes the record (README, "Known limits").
        """
        unaccounted = self._positions.rewind_all()
        if unaccounted:
            await self._position(unaccounted, "positioned again after a failed fetch")
        if classify(exc) is Verdict.TRANSIENT and isinstance(exc, KafkaError):
            self.conditions.note("fetch", f"fetch failing: {exc!r}")
            log.warning("fetch failed (%r); fetching again", exc)
            await self._pause(self.settings.worker.retry_backoff_initial_s)
            return
        self._unreadable += 1
        self.conditions.note("fetch", f"fetch failing on an undecodable record: {exc!r}")
        delay = min(
            self.settings.worker.retry_backoff_initial_s * 2**self._unreadable,
            self.settings.worker.retry_backoff_max_s,
        )
        log.error(
            "fetch failed on a record the client cannot decode (%r); fetching again from "
            "where the batches ended, in %.1fs",
            exc,
            delay,
        )
        await self._pause(delay)

    async def _pause(self, delay: float) -> None:
        """Sleep before fetching again: the member moves nothing meanwhile, so it shows as
        backing off (orders_worker_backing_off), as in _back_off."""
        self.metrics.backing_off(on=True)
        try:
            await asyncio.sleep(delay)
        finally:
            self.metrics.backing_off(on=False)

    async def _recover(self, exc: OffsetOutOfRangeError) -> None:
        positions: dict[TopicPartition, int] = exc.args[0] if exc.args else {}
        for tp, offset in positions.items():
            async with self._in_flight:
                try:
                    resume_at = await recover_out_of_range(
                        self._consumer,
                        self.engine,
                        Scope(self._group, self._topic, self.name),
                        tp,
                        offset,
                    )
                except Exception as failure:
                    if classify(failure) is not Verdict.TRANSIENT:
                        raise
                    log.warning("could not recover %s from out of range (%r)", tp, failure)
                    await asyncio.sleep(self.settings.worker.retry_backoff_initial_s)
                    continue
                if tp in self._consumer.assignment():
                    self._positions.seek(tp, resume_at)

    # --- one batch -------------------------------------------------------------------------

    async def _store_in_time(self, prepared: PreparedBatch) -> None:
        # One span per batch transaction, linked to each record's producer span (if tracing).
        with tracing.processing(self._tracer, self._topic, self._group, prepared.records()):
            await asyncio.wait_for(self._store(prepared), self.settings.worker.batch_timeout_s)

    async def _store(self, prepared: PreparedBatch) -> None:
        async with self._in_flight:
            # A rebalance may have revoked partitions since getmany returned: drop their records.
            prepared = prepared.only({tp.partition for tp in self._consumer.assignment()})
            if not prepared.spans:
                return
            faults.hit("before_db_transaction")
            began = time.perf_counter()
            outcome = await self._writer.write(prepared)
            # Just after PostgreSQL's COMMIT: the end of the end-to-end latency.
            self.metrics.batch_written(outcome, time.perf_counter() - began, datetime.now(UTC))
            faults.hit("after_db_commit")
            for partition, position in outcome.fenced.items():
                # Someone else moved this partition on: whatever we fetched is not ours to write.
                log.warning(
                    "partition %d fenced: stored position %d, batch began at %d; seeking there",
                    partition,
                    position,
                    next(s.start for s in prepared.spans if s.partition == partition),
                )
                self._positions.seek(TopicPartition(self._topic, partition), position)
                self.conditions.hold(
                    partition, f"fenced: another member moved the position (stored at {position})"
                )
            written = outcome.written.spans if outcome.written is not None else []
            self.conditions.release(s.partition for s in written)
            await self._commit_to_kafka(
                {
                    TopicPartition(self._topic, s.partition): OffsetAndMetadata(s.end, "")
                    for s in written
                }
            )
            self._count(outcome)

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
            self.metrics.kafka_commit(ok=False)
            log.warning("Kafka commit failed (%r); positions are safe in PostgreSQL", exc)
        else:
            self.metrics.kafka_commit(ok=True)

    async def _back_off(self, batches: list[PreparedBatch | None], delay: float) -> None:
        """Rewind to the start of every unstored span, pause fetching, and keep polling (so we
        stay in the group) until the delay is over."""
        rewind: dict[TopicPartition, int] = {}
        for batch in batches:
            for span in batch.spans if batch is not None else []:
                tp = TopicPartition(self._topic, span.partition)
                rewind[tp] = min(rewind.get(tp, span.start), span.start)
        assigned = self._consumer.assignment()
        for tp, offset in rewind.items():
            if tp in assigned:
                self._positions.seek(tp, offset)
        self.metrics.backing_off(on=True)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + delay
            while not self._stopping.is_set() and loop.time() < deadline:
                # Pause again each round: a rebalance meanwhile may have assigned new partitions.
                self._consumer.pause(*self._consumer.assignment())
                remaining_ms = max(1, int((deadline - loop.time()) * 1000))
                before = self._positions.positions()
                with contextlib.suppress(KafkaError):
                    stray = await self._consumer.getmany(timeout_ms=min(remaining_ms, 500))
                    for tp, fetched in stray.items():  # fetched before the pause took effect
                        if fetched:
                            self._positions.seek(tp, before.get(tp, fetched[0].offset))
        finally:
            self._consumer.resume(*self._consumer.assignment())
            self.metrics.backing_off(on=False)

    def _hold_back(self, partition: int, batch: Batch, bounds: Bounds) -> tuple[Batch, Bounds]:
        """The ORDERS_FAULT_BLOCK_PARTITION fault point (app.worker.faults): while it blocks,
        the partition's records leave the batch before anything is written, the partition goes
        back to where they began (as a retried batch would) and stays paused; the others flow."""
        tp = TopicPartition(self._topic, partition)
        if not faults.blocking():
            if tp in self._held:
                self._held.discard(tp)
                self.conditions.release([partition])
                if tp in self._consumer.assignment():
                    self._consumer.resume(tp)
                log.info("partition %d: fault point no longer blocks it", partition)
            return batch, bounds
        if tp not in self._consumer.assignment():
            return batch, bounds
        records = batch.pop(tp, None)
        start, _ = bounds.pop(tp, (None, None))
        if start is None and records:
            start = records[0].offset
        if start is not None:
            self._positions.seek(tp, start)
        self._consumer.pause(tp)
        if tp not in self._held:
            self._held.add(tp)
            log.warning("partition %d: blocked by fault point, held at %s", partition, start)
        self.conditions.hold(partition, "blocked by fault point")
        return batch, bounds

    def _count(self, outcome: BatchOutcome) -> None:
        written = outcome.written
        self.stats.batches += 1
        self.stats.fenced += len(outcome.fenced)
        self.stats.inserted += outcome.inserted
        self.stats.dead_lettered += outcome.dead_lettered
        self.stats.quarantined += outcome.quarantined
        self.stats.skipped_offsets += outcome.skipped_offsets
        if written is None:
            return
        records.log_expired(written.expired)
        self.stats.records += written.size
        self.stats.expired += len(written.expired)
        for span in written.spans:
            self.stats.positions[span.partition] = span.end

    # --- rebalancing -----------------------------------------------------------------------

    async def _on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = set(revoked)
        self._owned.difference_update(revoked)  # first: before waiting for the batch in flight
        self._positions.forget(revoked)
        self._positioned_on_assignment.difference_update(revoked)
        self._held.difference_update(revoked)
        gone = [tp.partition for tp in revoked if tp.topic == self._topic]
        self.conditions.release(gone)
        self.metrics.forget_partitions(gone)
        self.metrics.rebalanced("revoked", len(self._owned))
        try:
            async with asyncio.timeout(self.settings.worker.batch_timeout_s):
                async with self._in_flight:
                    pass  # the in-flight batch has committed (or failed and will be redone)
        except TimeoutError:
            log.warning("in-flight batch did not finish before the revocation; the fence holds")
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    async def _on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        mine = sorted(
            (tp for tp in assigned if tp.topic == self._topic), key=lambda tp: tp.partition
        )
        self._owned = set(mine)
        self.joined = True
        self.metrics.rebalanced("assigned", len(mine))
        if not mine:
            return
        await self._position(mine, "assigned")
        self._positioned_on_assignment.update(mine)

    async def _position(self, mine: list[TopicPartition], why: str) -> None:
        """Each partition from its position in PostgreSQL, else Kafka's committed offset, else
        the log's beginning."""
        timeout = self.settings.worker.commit_timeout_s
        try:
            async with asyncio.timeout(timeout):
                async with self.engine.connect() as connection:
                    stored = await read_positions(
                        connection, self._group, self._topic, [tp.partition for tp in mine]
                    )
        except Exception as exc:
            if classify(exc) is not Verdict.TRANSIENT:
                raise
            # Start from Kafka's committed offsets instead; the fence corrects any difference.
            log.warning("could not read positions from PostgreSQL (%r)", exc)
            stored = {}
        for tp in mine:
            if tp.partition in stored:
                self._positions.seek(tp, stored[tp.partition])
        unpositioned = [tp for tp in mine if tp.partition not in stored]
        try:
            async with asyncio.timeout(timeout):
                await self._position_from_kafka(unpositioned)
        except (TimeoutError, KafkaError) as exc:
            # getmany then raises NoOffsetForPartitionError for them, handled in _fetch.
            log.warning("could not position %s (%r)", unpositioned, exc)
        log.info(
            "partitions %s: %s (resuming at %s)",
            why,
            [tp.partition for tp in mine],
            {tp.partition: stored.get(tp.partition, "committed") for tp in mine},
        )

    async def _position_from_kafka(self, partitions: list[TopicPartition]) -> None:
        """A partition PostgreSQL has no position for: Kafka's committed offset, else the
        log's beginning (a new group reads the whole topic)."""
        await self._positions.position_from_kafka(partitions)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: OrderWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._worker._on_assigned(assigned)


async def _outcome(task: asyncio.Task[None]) -> BaseException | None:
    """Wait for a batch to be stored; a failure is returned (the batch is retried).

    Deterministic failures never reach here: the batch writer isolates the records they
    belong to. Whatever does is retried with a back-off (see app.worker.failures).
    """
    try:
        await task
    except Exception as exc:
        if classify(exc) is not Verdict.TRANSIENT:
            log.exception("batch failed on a record the writer did not isolate")
        elif not isinstance(exc, (TimeoutError, KafkaError, OSError)):
            log.exception("batch failed for a reason not foreseen; retried after a back-off")
        return exc
    return None


async def stop_quietly(worker: OrderWorker) -> None:
    with contextlib.suppress(Exception):
        await worker.close()

"""One member of the analytics group: fetch a batch, count its orders, store it the mode's way.

The two modes differ in where the group's positions live, and so in what a crash does; each
says so in its own module, whose `store` is the whole difference:
- fast (app/analytics/fast.py): Kafka's auto-commit, the windows upserted per batch;
- exact (app/analytics/exact.py): the windows and the positions in one PostgreSQL transaction.
Everything else is here: the consumer, its rebalance listener, what counts (app.analytics.batch),
the watermark's inputs, and what a failed batch does: whatever app.worker.failures calls it, it
is fetched again after a back-off. Analytics has nowhere to set a record aside (a record that is
not an order is skipped before any write), and an order set aside would be an order not
counted: a batch PostgreSQL refuses for its data stalls the member, loudly.

Fetching is the worker's (app.worker.fetch_positions): a fetch that raises half-way (records of
other partitions already taken from aiokafka's buffer) sends every partition back to where its
batches ended, and the partitions with no batch yet to their stored or committed position; an
idle member reconciles positions a fetch passed without accounting for them.

Clocks: a partition read to its end counts as having reached the instant (THIS host's clock)
the client last heard from its leader, while records carry the BROKER's append time. The
consumer host's clock must therefore stay within ANALYTICS_GRACE_S of the brokers': a host
ahead by more closes windows too early, and the orders appended into them arrive late. Late
orders are still counted (as corrections), counted apart (`late`), and logged as a warning
that names this cause, so a skew shows.

aiokafka pitfalls designed around:
- rebalance callbacks run concurrently with this loop: a lock makes a revocation wait for the
  batch in hand, and each batch keeps only the partitions still assigned when it is stored;
- getmany waits without bound while the group cannot settle: a stop request interrupts it;
- only the PostgreSQL transaction is timed by WORKER_BATCH_TIMEOUT_S (`transaction()`): a
  Kafka commit after it has its own bound, and a slow one never turns a stored batch into a
  failed one;
- `highwater()`/`last_stable_offset()` assert that the partition is assigned: asked only of the
  current assignment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.analytics import window_store
from app.analytics.batch import CountedBatch, count
from app.analytics.windows import tally
from app.db.positions import PartitionSpan
from app.group_member_options import group_member_options
from app.settings import Settings
from app.worker import records
from app.worker.batch_writer import Scope
from app.worker.failures import Verdict, classify, describe
from app.worker.fetch_positions import Batch, Bounds, FetchPositions

log = logging.getLogger(__name__)

# A member with nothing to count still moves the watermark of the partitions it has read to
# their end (an idle stream must close its windows too), at most this often.
IDLE_WRITE_S = 1.0


class Mode(Protocol):
    """What makes a mode: its consumer's commit settings, where it positions a partition it is
    given, and how it stores a batch (returning the part it stored)."""

    NAME: str

    def consumer_options(self, settings: Settings) -> dict[str, Any]: ...

    async def position(
        self, member: AnalyticsMember, partitions: list[TopicPartition]
    ) -> list[TopicPartition]: ...

    async def store(self, member: AnalyticsMember, batch: CountedBatch) -> CountedBatch: ...


@dataclass
class AnalyticsStats:
    batches: int = 0
    orders: int = 0  # counted into windows
    late: int = 0  # of them, added to windows already closed (corrections)
    skipped: int = 0  # records that are not orders (undecodable, appended late), not counted
    fenced: int = 0  # partitions of a batch another member had moved on (exact mode)
    retries: int = 0


def member_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class AnalyticsMember:
    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        mode: Mode,
        *,
        instance_id: str | None = None,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.mode = mode
        self.name = name or member_name()
        self.group = settings.analytics.group_id
        self.topic = settings.kafka.orders_topic
        self.scope = Scope(self.group, self.topic, self.name)
        self.stats = AnalyticsStats()
        self._instance_id = instance_id
        self._in_flight = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._unreadable = 0  # fetches in a row that failed on a record (for the back-off)
        self.reset_clients()

    def reset_clients(self) -> None:
        """A fresh consumer (an aiokafka client cannot be started again after a failed start)."""
        kafka = self.settings.kafka
        self.consumer = AIOKafkaConsumer(
            client_id=f"{kafka.client_id}-analytics-{self.name}",
            group_id=self.group,
            # Static membership (KIP-345) when given: a member restarted under the same id
            # gets its partitions back without waiting out the old one's session.
            group_instance_id=self._instance_id,
            auto_offset_reset="earliest",  # a new group counts the whole topic
            # Records of aborted transactions are not orders.
            isolation_level="read_committed",
            max_poll_records=self.settings.analytics.max_records,
            **self.mode.consumer_options(self.settings),
            **group_member_options(self.settings),  # timed as the worker group is (WORKER_*)
        )
        self.positions = FetchPositions(self.consumer)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def request_stop(self) -> None:
        """Finish the batch in hand, then leave."""
        self._stopping.set()

    async def start(self) -> None:
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))
        await self.consumer.start()
        log.info(
            "analytics member %s (%s mode) joined group %s on topic %s",
            self.name,
            self.mode.NAME,
            self.group,
            self.topic,
        )

    async def close(self) -> None:
        """Leave the group, bounded (the fast mode's consumer commits its position as it goes)."""
        try:
            await asyncio.wait_for(self.consumer.stop(), self.settings.worker.commit_timeout_s)
        except (TimeoutError, KafkaError) as exc:
            log.warning("analytics consumer did not leave the group cleanly: %r", exc)

    # --- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Count batches until `request_stop()`; the batch in hand is stored before it returns."""
        worker = self.settings.worker
        backoff = worker.retry_backoff_initial_s
        loop = asyncio.get_running_loop()
        last_write = float("-inf")
        while not self.stopping:
            batch, bounds = await self._fetch()
            if not batch and not bounds:
                # Idle: make sure no offsets were passed unaccounted (app.worker.fetch_positions).
                for tp in self.positions.reconcile():
                    log.info(
                        "partition %d: fetching again from where its batches ended", tp.partition
                    )
            prepared = await records.prepare(batch, bounds)
            counted = count(prepared, batch, self._caught_up())
            if not counted.spans and (
                not counted.progress or loop.time() - last_write < IDLE_WRITE_S
            ):
                continue
            try:
                async with self._in_flight:
                    # A rebalance may have revoked partitions since getmany returned.
                    counted = counted.only({tp.partition for tp in self.consumer.assignment()})
                    stored = await self.mode.store(self, counted)
            except Exception as exc:  # every failure is retried: see the module docstring
                self.stats.retries += 1
                if classify(exc) is Verdict.TRANSIENT:
                    log.warning("analytics batch failed (%r); fetched again in %.1fs", exc, backoff)
                else:  # no record may be set aside here: it would be an order not counted
                    log.error(  # noqa: TRY400 - the error is in the line
                        "analytics batch refused for its data (%s); retried in %.1fs: this "
                        "member stalls until that is fixed",
                        describe(exc),
                        backoff,
                    )
                self._rewind(counted.spans)
                await self._sleep(backoff)
                backoff = min(backoff * 2, worker.retry_backoff_max_s)
                continue
            backoff = worker.retry_backoff_initial_s
            last_write = loop.time()
            self._count(counted, stored)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A mode's PostgreSQL transaction, bounded by WORKER_BATCH_TIMEOUT_S: the only part of
        storing a batch that is timed as the batch (a Kafka commit after it has its own bound)."""
        async with asyncio.timeout(self.settings.worker.batch_timeout_s):
            async with self.engine.begin() as connection:
                yield connection

    async def add_to_windows(
        self, connection: AsyncConnection, batch: CountedBatch
    ) -> CountedBatch:
        """Add the batch's orders to their windows and move its partitions' watermarks, in the
        caller's transaction; the batch, with how many of its orders came late (windows.py)."""
        analytics = self.settings.analytics
        watermark = await window_store.read_watermark(
            connection, self.group, self.topic, analytics.grace_s
        )
        windows = tally(batch.all_sales(), analytics.window_s, watermark)
        await window_store.add_windows(connection, self.group, analytics.window_s, windows)
        await window_store.move_watermarks(connection, self.group, self.topic, batch.progress)
        return replace(batch, late=sum(window.late for window in windows.values()))

    # --- fetching ----------------------------------------------------------------------------

    async def _fetch(self) -> tuple[Batch, Bounds]:
        try:
            fetched = await self.positions.getmany_unless(
                self._stopping,
                timeout_ms=self.settings.worker.fetch_timeout_ms,
                max_records=self.settings.analytics.max_records,
            )
        except Exception as exc:
            await self._fetch_failed(exc)
            return {}, {}
        self._unreadable = 0
        return fetched

    async def _fetch_failed(self, exc: Exception) -> None:
        """A fetch that raised, handled as the worker does (app.worker.consumer._fetch_failed):
        it may have raised half-way, records of other partitions already taken from aiokafka's
        buffer, so every partition goes back to where its batches ended (a seek drops what was
        buffered) and those with no batch yet are positioned afresh. The broker away: fetch
        again; anything else is a record the client cannot decode, and the member backs off
        longer and longer, loudly, until an operator removes it (README, "Known limits")."""
        worker = self.settings.worker
        unaccounted = self.positions.rewind_all()
        if unaccounted:
            await self._reposition(unaccounted)
        if classify(exc) is Verdict.TRANSIENT and isinstance(exc, KafkaError):
            log.warning("analytics fetch failed (%r); fetching again", exc)
            await self._sleep(worker.retry_backoff_initial_s)
            return
        self._unreadable += 1
        delay = min(
            worker.retry_backoff_initial_s * 2**self._unreadable, worker.retry_backoff_max_s
        )
        log.error(
            "analytics fetch failed on a record the client cannot decode (%r); fetching again "
            "from where the batches ended, in %.1fs",
            exc,
            delay,
        )
        await self._sleep(delay)

    async def _reposition(self, partitions: list[TopicPartition]) -> None:
        """Partitions with no batch yet: where the mode keeps positions, else Kafka's committed
        offset, else the log's beginning."""
        try:
            async with asyncio.timeout(self.settings.worker.commit_timeout_s):
                positioned = await self.mode.position(self, partitions)
                await self.positions.position_from_kafka(
                    [tp for tp in partitions if tp not in positioned]
                )
        except Exception as exc:  # the next fetch fails again, and this is tried again
            log.warning(
                "could not position %s again (%r)", [tp.partition for tp in partitions], exc
            )

    def _caught_up(self) -> dict[int, int]:
        """Partitions read to their end, each with the instant (ms, this host's clock) the
        client last heard so from the partition's leader: whatever is appended there next is
        appended later, up to the clocks' skew, which ANALYTICS_GRACE_S absorbs."""
        positions = self.positions.positions()
        caught_up = {}
        for tp in self.consumer.assignment():
            position = positions.get(tp)
            end = self.consumer.last_stable_offset(tp)  # read_committed: the LSO
            if end is None or end < 0:
                end = self.consumer.highwater(tp)
            heard = self.consumer.last_poll_timestamp(tp)
            if position is not None and end is not None and heard is not None and position >= end:
                caught_up[tp.partition] = heard
        return caught_up

    def _rewind(self, spans: Iterable[PartitionSpan]) -> None:
        assigned = self.consumer.assignment()
        for span in spans:
            tp = TopicPartition(self.topic, span.partition)
            if tp in assigned:
                self.positions.seek(tp, span.start)

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    def _count(self, counted: CountedBatch, stored: CountedBatch) -> None:
        self.stats.batches += 1
        self.stats.skipped += counted.skipped
        self.stats.orders += stored.orders
        self.stats.fenced += len(stored.fenced)
        self.stats.late += stored.late
        if stored.late:
            log.warning(
                "%d late order(s) added to windows already closed, as corrections (%d so far); "
                "if this recurs, check that this host's clock is within ANALYTICS_GRACE_S (%gs) "
                "of the brokers'",
                stored.late,
                self.stats.late,
                self.settings.analytics.grace_s,
            )

    # --- rebalancing -------------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self.positions.forget(revoked)
        try:
            async with asyncio.timeout(self.settings.worker.batch_timeout_s):
                async with self._in_flight:
                    pass  # the batch in hand has been stored (or failed, and is fetched again)
        except TimeoutError:
            log.warning("analytics batch still in flight at the revocation")

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        mine = sorted(
            (tp for tp in assigned if tp.topic == self.topic), key=lambda tp: tp.partition
        )
        if not mine:
            return
        try:
            async with asyncio.timeout(self.settings.worker.commit_timeout_s):
                async with self.engine.begin() as connection:
                    await window_store.know_partitions(
                        connection, self.group, self.topic, [tp.partition for tp in mine]
                    )
                await self.mode.position(self, mine)
        except Exception as exc:  # positioned by Kafka instead; the exact mode's fence corrects
            log.warning("could not prepare partitions %s (%r)", [tp.partition for tp in mine], exc)
        log.info("analytics partitions assigned: %s", [tp.partition for tp in mine])


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, member: AnalyticsMember) -> None:
        self._member = member

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._member._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._member._on_assigned(assigned)

"""`orders payments`: one member of PAYMENTS_GROUP_ID, charging every order exactly once.

    getmany (read_committed) ──▶ KeyOrderedScheduler ──▶ charge(record):
                                  customers concurrently,      audit `started` (committed)
                                  one customer in order        POST /charges (same charge key
                                                               on every retry, with back-off)
                                                               audit outcome
                                                               hold the `payments` event
    every PAYMENTS_COMMIT_INTERVAL_S, per partition (app.payments.transactions):
        BEGIN; events below the watermark; offsets = {tp: watermark}; COMMIT

What each guarantee rests on:
- charged exactly once: the charge key is derived from the order id, so every retry, every redo
  after a crash and every other member asks the gateway for the same charge, and it charges once;
- one visible event per order: an event is produced only in the transaction that also moves the
  group's offset past its record, and only once the watermark (lowest unfinished offset) has
  passed it; a record above the committed offset has no visible event, and is redone;
- zombies: one transactional id per input partition (app.payments.transactions): the new owner's
  init_transactions fences the old one, whose commit is then refused (PartitionFencedError: the
  member drops the partition's work, keeps running, and gets partitions again at the next
  rebalance);
- the audit trail: `started` is committed before the call, so the gateway never sees a call the
  trail does not (app.payments.audit).

aiokafka pitfalls designed around: the rebalance listener runs concurrently with this loop (each
job carries the partition's transactions object it was fetched under; a job of a partition
given up meanwhile counts for nothing), commits name their offsets (never `commit()`), and every
wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from app.group_member_options import group_member_options
from app.payments.audit import AttemptRow, AuditTrail, Outcome
from app.payments.charges import Charge, ChargeRequest
from app.payments.events import PaymentEvent
from app.payments.gateway_client import (
    ChargeResult,
    GatewayClient,
    GatewayError,
    settle_charge,
)
from app.payments.key_ordered import KeyOrderedScheduler
from app.payments.order_charges import charge_for
from app.payments.transactions import (
    PartitionFencedError,
    PartitionTransactions,
    TransactionFailedError,
)
from app.settings import Settings
from app.worker.consumer import worker_name
from app.worker.fetch_positions import FetchPositions, Record

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 5.0
BUFFERED_PER_SLOT = 8  # max_buffered = 8 x max_in_flight: why, in PaymentsWorker.__init__


@dataclass(frozen=True)
class Job:
    """An orders record, with the partition's transactions it was fetched under."""

    record: Record
    owner: PartitionTransactions

    @property
    def partition(self) -> int:
        partition: int = self.record.partition
        return partition

    @property
    def offset(self) -> int:
        offset: int = self.record.offset
        return offset

    @property
    def key(self) -> bytes | None:
        key: bytes | None = self.record.key
        return key


@dataclass
class _Fetched:
    """One partition's share of a fetch, submitted as room allows; `end`: the position after."""

    owner: PartitionTransactions
    records: deque[Record]
    end: int | None


@dataclass
class PaymentsStats:
    records: int = 0
    charged: int = 0
    refused: int = 0
    attempts: int = 0
    fenced: int = 0
    failed_transactions: int = 0
    transactions: int = 0
    events_committed: int = 0
    partitions: list[int] = field(default_factory=list)


class PaymentsWorker:
    def __init__(self, settings: Settings, engine: AsyncEngine, name: str | None = None) -> None:
        self.settings = settings
        self.name = name or worker_name()
        self.stats = PaymentsStats()
        self._payments = settings.payments
        self._topic = settings.kafka.orders_topic
        self._group = settings.payments.group_id
        self._stopping = asyncio.Event()
        self._rng = random.Random()
        self._partitions: dict[int, PartitionTransactions] = {}  # owned, with a live producer
        self._commit_lock = asyncio.Lock()  # one transaction per producer at a time
        self._audit = AuditTrail(
            engine,
            backoff_initial_s=self._payments.retry_backoff_initial_s,
            backoff_max_s=self._payments.retry_backoff_max_s,
        )
        self._gateway = GatewayClient(
            self._payments.gateway_url,
            self._payments.gateway_timeout_s,
            max_connections=self._payments.max_in_flight,
        )
        in_flight = self._payments.max_in_flight
        # A record counts against max_buffered until its partition's watermark passes it, so
        # one customer stuck retrying holds every later record of its partition in the count.
        # At 50 ms a call, max_in_flight slots finish ~20 x max_in_flight records/s, a sixth of
        # them on the stuck partition: 8 x max_in_flight leaves ~2 s of room (several retries
        # with back-off) before the member pauses; 4 x paused it after the first retry or two.
        # Memory is a few hundred bytes a record: 2,048 records at the default 256.
        self._max_buffered = BUFFERED_PER_SLOT * in_flight
        self._scheduler: KeyOrderedScheduler[Job] = KeyOrderedScheduler(
            self._charge, max_in_flight=in_flight, max_buffered=self._max_buffered
        )
        self._backlog: deque[_Fetched] = deque()  # fetched, not yet submitted (no room)
        self._fetching_paused = False
        self._poll_s = self.settings.worker.fetch_timeout_ms / 1000
        self._consumer = self._build_consumer()
        self._positions = FetchPositions(self._consumer)

    def _build_consumer(self) -> AIOKafkaConsumer:
        kafka, worker = self.settings.kafka, self.settings.worker
        return AIOKafkaConsumer(
            client_id=f"{kafka.client_id}-payments-{self.name}",
            group_id=self._group,
            enable_auto_commit=False,
            # A new group charges the whole topic; afterwards its committed offsets decide.
            auto_offset_reset="earliest",
            # Only committed orders; and the offsets our own transactions committed are stable.
            isolation_level="read_committed",
            max_poll_records=worker.max_records,
            **group_member_options(self.settings),
        )

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._gateway.__aenter__()
        self._consumer.subscribe([self._topic], listener=_Rebalance(self))
        await self._consumer.start()
        log.info("payments %s joined group %s on topic %s", self.name, self._group, self._topic)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Fetch and submit until `request_stop()`; the committer runs beside it. The loop never
        waits on the scheduler: a batch that does not fit stays in the backlog, and fetching is
        paused (getmany goes on, returning nothing) until there is room. aiokafka counts the
        member idle (max.poll.interval.ms: it would leave the group) only while no getmany
        runs, so a gateway outage longer than that costs no rebalance."""
        committer = asyncio.create_task(self._commit_forever())
        try:
            while not self._stopping.is_set():
                await self._submit_backlog()
                if self._backlog:
                    self._pause_fetching()
                    if self._scheduler.has_room():  # full of held events: a commit frees them
                        await asyncio.sleep(self._payments.commit_interval_s)
                    else:
                        await self._scheduler.wait_for_room(self._poll_s)
                elif self._fetching_paused:
                    self._resume_fetching()
                # Paused: a quick poll (a partition taken over meanwhile may deliver records).
                batch, bounds = await self._fetch(0 if self._backlog else None)
                for tp, (_, end) in bounds.items():
                    owner = self._partitions.get(tp.partition)
                    if owner is not None and not owner.fenced:  # else the next owner reads it
                        self._backlog.append(_Fetched(owner, deque(batch.get(tp, [])), end))
        finally:
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer

    async def _submit_backlog(self) -> None:
        """Submit fetched records, in order, while there is room. No submit waits (there is
        room), so no job reaches the scheduler for a partition after it left `_partitions`, and
        `_on_assigned` clears whatever an earlier assignment of a partition left there."""
        while self._backlog and self._has_room():
            fetched = self._backlog[0]
            owner = fetched.owner
            if self._partitions.get(owner.tp.partition) is not owner:
                self._backlog.popleft()  # revoked or fenced meanwhile: the next owner reads it
                continue
            if fetched.records:
                if not await self._scheduler.submit(Job(fetched.records.popleft(), owner)):
                    self._backlog.popleft()  # being revoked
                continue
            self._backlog.popleft()
            if fetched.end is not None:
                # Offsets passed without a record (markers, aborted records) are done.
                self._scheduler.fetched_to(owner.tp.partition, fetched.end)

    def _has_room(self) -> bool:
        """The scheduler's room, and a bound on the events held for the next transactions: a
        record leaves the scheduler's count when the watermark passes it, its event only when a
        transaction commits it; were transactions failing for a while, events would pile up."""
        held = sum(owner.held for owner in self._partitions.values())
        return self._scheduler.has_room() and held < self._max_buffered

    def _pause_fetching(self) -> None:
        # Every round: a partition taken over while paused was resumed by _take_over.
        self._consumer.pause(*self._consumer.assignment())
        self._fetching_paused = True

    def _resume_fetching(self) -> None:
        assigned = self._consumer.assignment()
        owned = [o.tp for o in self._partitions.values() if o.tp in assigned and not o.fenced]
        self._consumer.resume(*owned)  # a fenced partition stays paused (_fenced)
        self._fetching_paused = False

    async def drain(self, timeout_s: float) -> None:
        """After run(): let the charges in flight finish, commit them, leave the group."""
        with contextlib.suppress(Exception):
            await self._scheduler.drain(timeout_s)
        await self._commit_round()
        async with self._commit_lock:
            await asyncio.gather(*(owner.close() for owner in self._partitions.values()))
            self._partitions.clear()

    async def close(self) -> None:
        await self._scheduler.close(timeout=1.0)
        try:
            async with asyncio.timeout(self.settings.worker.commit_timeout_s):
                await self._consumer.stop()
        except (TimeoutError, KafkaError) as exc:
            log.warning("consumer did not leave the group cleanly: %r", exc)
        for owner in self._partitions.values():
            await owner.close()
        self._partitions.clear()
        await self._audit.close()
        await self._gateway.__aexit__(None, None, None)

    async def _fetch(
        self, timeout_ms: int | None = None
    ) -> tuple[
        dict[TopicPartition, list[Record]], dict[TopicPartition, tuple[int | None, int | None]]
    ]:
        """getmany, or nothing once a stop is requested (getmany may wait on a rebalance)."""
        fetch = asyncio.ensure_future(
            self._positions.getmany(
                timeout_ms=self.settings.worker.fetch_timeout_ms
                if timeout_ms is None
                else timeout_ms,
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
            return {}, {}
        try:
            return fetch.result()
        except KafkaError as exc:
            log.warning("fetch failed (%r); fetching again", exc)
            self._positions.rewind_all()
            await asyncio.sleep(self._payments.retry_backoff_initial_s)
            return {}, {}

    # --- one record: the charge, audited ---------------------------------------------------

    async def _charge(self, job: Job) -> None:
        """The scheduler's `process`: charge the order (if the record is one), then hold its
        event for the partition's next transaction."""
        request = charge_for(job.record)  # None: not an order (the order worker's own rules)
        event = None
        if request is not None:
            result = await self._settle(request)
            event = PaymentEvent.of(request, result.charge, job.partition, job.offset)
        job.owner.finished(job.offset, event)
        self.stats.records += 1

    async def _settle(self, request: ChargeRequest) -> ChargeResult:
        """The one retry loop (gateway_client.settle_charge), audited: each attempt's `started`
        row is committed before the call, its outcome appended after. A refusal (409/422:
        asking again cannot succeed) is a result: the order's event says `refused`."""
        started: dict[int, AttemptRow] = {}

        async def before(attempt: int) -> None:
            started[attempt] = AttemptRow.started(request, attempt, self.name)
            await self._audit.append(started[attempt])
            self.stats.attempts += 1

        async def after(attempt: int, outcome: Charge | GatewayError) -> None:
            row = started.pop(attempt)
            if isinstance(outcome, GatewayError):
                failed: Outcome = "failed" if outcome.retriable else "refused"
                await self._audit.append(row.finished(failed, outcome.status, str(outcome)))
            else:
                done: Outcome = "replayed" if outcome.replayed else "charged"
                status = 200 if outcome.replayed else 201
                await self._audit.append(row.finished(done, status, None))

        result = await settle_charge(
            self._gateway,
            request,
            backoff_initial_s=self._payments.retry_backoff_initial_s,
            backoff_max_s=self._payments.retry_backoff_max_s,
            before_attempt=before,
            after_attempt=after,
            rng=self._rng,
        )
        if result.refusal is not None:
            self.stats.refused += 1
            log.error("charge %s refused: %s", request.charge_key, result.refusal)
        else:
            self.stats.charged += 1
        return result

    # --- transactions ----------------------------------------------------------------------

    async def _commit_forever(self) -> None:
        loop = asyncio.get_running_loop()
        report_at = loop.time() + PROGRESS_EVERY_S
        while True:
            await asyncio.sleep(self._payments.commit_interval_s)
            if loop.time() >= report_at:
                report_at = loop.time() + PROGRESS_EVERY_S
                log.info(
                    "progress: %s; in flight %d, buffered %d, backlog %d, paused %s, "
                    "watermarks %s, committed %s",
                    self.stats,
                    self._scheduler.in_flight,
                    self._scheduler.buffered,
                    sum(len(fetched.records) for fetched in self._backlog),
                    sorted(tp.partition for tp in self._consumer.paused()),
                    self._scheduler.watermarks(),
                    {p: o.committed for p, o in self._partitions.items()},
                )
            try:
                await self._commit_round()
            except Exception:
                # Not foreseen: loud, and retried next round (nothing is committed meanwhile).
                log.exception("commit round failed")

    async def _commit_round(self) -> None:
        """Each owned partition: its finished events and its watermark, one transaction each,
        the partitions' transactions side by side (one producer each)."""
        async with self._commit_lock:
            owners = list(self._partitions.values())
            results = await asyncio.gather(
                *(self._commit(owner) for owner in owners), return_exceptions=True
            )
        for owner, result in zip(owners, results, strict=True):
            if isinstance(result, PartitionFencedError):
                await self._fenced(owner, result)
            elif isinstance(result, TransactionFailedError):
                self.stats.failed_transactions += 1
                log.warning("%s; retried at the next round", result)
            elif isinstance(result, BaseException):
                raise result

    async def _commit(self, owner: PartitionTransactions) -> None:
        watermark = self._scheduler.watermark(owner.tp.partition)
        if watermark is not None and self._partitions.get(owner.tp.partition) is owner:
            before = owner.transactions
            committed = await owner.commit_to(watermark)
            self.stats.events_committed += committed
            self.stats.transactions += owner.transactions - before

    async def _fenced(self, owner: PartitionTransactions, error: PartitionFencedError) -> None:
        """Another member owns the partition now (we were paused, or cut off, past the session
        timeout): never retry; drop its work and stop fetching it until the group says again."""
        self.stats.fenced += 1
        log.warning("%s: dropping its work; the group will reassign it", error)
        if self._partitions.get(owner.tp.partition) is owner:
            del self._partitions[owner.tp.partition]
            with contextlib.suppress(Exception):
                self._consumer.pause(owner.tp)
            await self._scheduler.revoke([owner.tp.partition], grace_s=0)
        await owner.close()

    # --- rebalancing (runs concurrently with run(): aiokafka pitfall) ----------------------

    async def _on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Hand the partitions over clean: first no new jobs for them (the fetch loop checks
        ownership), then their running charges finish within PAYMENTS_REVOKE_GRACE_S (the rest
        are cancelled), then one last transaction up to the final watermark, bounded; whatever
        it does not commit, the next owner redoes (charge-free). Then the producers go."""
        gone = {
            tp.partition: owner
            for tp in revoked
            if tp.topic == self._topic
            and (owner := self._partitions.pop(tp.partition, None)) is not None
        }
        if not gone:
            return
        final = await self._scheduler.revoke(gone, grace_s=self._payments.revoke_grace_s)
        async with self._commit_lock:

            async def hand_over(partition: int, owner: PartitionTransactions) -> None:
                try:
                    if partition in final:
                        committed = await owner.commit_to(final[partition])
                        self.stats.events_committed += committed
                except (PartitionFencedError, TransactionFailedError) as exc:
                    log.warning("partition %d: last commit failed (%s)", partition, exc)
                await owner.close()

            await asyncio.gather(*(hand_over(p, o) for p, o in gone.items()))
        log.info("payments partitions revoked: %s (committed to %s)", sorted(gone), final)

    async def _on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        mine = sorted(
            (
                tp
                for tp in assigned
                if tp.topic == self._topic and tp.partition not in self._partitions
            ),
            key=lambda tp: tp.partition,
        )
        self.stats.partitions = sorted(tp.partition for tp in assigned if tp.topic == self._topic)
        if not mine:
            return
        # aiokafka hands the assignment to the fetcher before this listener runs: getmany may
        # return these partitions' records while we take them over, which run() drops (not
        # ours yet). Paused now, _take_over positions each one and resumes it.
        self._consumer.pause(*mine)
        # A stale job fetched under an earlier assignment may have left state behind.
        await self._scheduler.revoke([tp.partition for tp in mine], grace_s=0)
        owners = [
            PartitionTransactions(
                self.settings.kafka,
                self._group,
                tp,
                self._payments.topic,
                self._payments.transaction_timeout_s,
                self._committed,
            )
            for tp in mine
        ]
        await asyncio.gather(*(self._take_over(owner) for owner in owners))

    async def _take_over(self, owner: PartitionTransactions) -> None:
        """init_transactions (fences the previous owner and settles its open transaction),
        then resume from the group's committed offset, which is stable only after that."""
        backoff = self._payments.retry_backoff_initial_s
        while not self._stopping.is_set():
            try:
                await owner.start()
                async with asyncio.timeout(self._payments.transaction_timeout_s):
                    committed = await self._committed(owner.tp)
                    if committed is None:
                        # Never committed: the log's start, explicitly. Records fetched and
                        # dropped before the pause above moved the position past them.
                        self._positions.positioned_by_kafka([owner.tp])
                        await self._consumer.seek_to_beginning(owner.tp)
            except (KafkaError, TimeoutError) as exc:
                log.warning("partition %d: cannot take over yet (%r)", owner.tp.partition, exc)
                await owner.close()
                owner = PartitionTransactions(
                    self.settings.kafka,
                    self._group,
                    owner.tp,
                    self._payments.topic,
                    self._payments.transaction_timeout_s,
                    self._committed,
                )
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, self._payments.retry_backoff_max_s)
                continue
            if owner.tp not in self._consumer.assignment():
                await owner.close()  # revoked while we were taking it over
                return
            if committed is not None:
                self._positions.seek(owner.tp, committed)
            owner.committed = committed
            self._consumer.resume(owner.tp)
            self._partitions[owner.tp.partition] = owner
            log.info("partition %d: taken over at %s", owner.tp.partition, committed)
            return

    async def _committed(self, tp: TopicPartition) -> int | None:
        offset: int | None = await self._consumer.committed(tp)
        return offset


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: PaymentsWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._worker._on_assigned(assigned)

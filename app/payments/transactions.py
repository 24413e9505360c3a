"""One input partition's Kafka transactions: its events and its consumed offset, atomically.

    finished(offset, event)  ─▶ held back ─(offset < watermark)─▶ BEGIN
                                                                  send each event (`payments`)
                                                                  send_offsets_to_transaction
                                                                      ({tp: watermark}, group)
                                                                  COMMIT

The watermark is the scheduler's: the lowest offset of the partition not yet finished. Events of
records finished above it are held back until it passes them, so a transaction never makes an
event visible whose record could be redone: after a crash the next owner resumes at the last
committed watermark, and the records it redoes are exactly those whose events are not visible.
Their charges are redone too, with the same charge key: the gateway answers with the first
charge (`replayed`), so the redo is charge-free.

Zombie fencing without KIP-447: aiokafka 0.14's send_offsets_to_transaction takes the group id
only (no member id or generation), so the group coordinator cannot refuse a zombie's offsets.
The transactional id is fenced instead: ONE producer per input partition, with
`transactional_id = f"{group}-{topic}-{partition}"`. Whoever owns the partition next calls
init_transactions with that id, which aborts the old owner's open transaction and bumps the
epoch; the old owner's next send or commit is refused with ProducerFenced. A fenced producer is
never retried: this member lost the partition, and its held events are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, ProducerFenced
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from app.errors import OrdersError
from app.kafka_security import kafka_client_security
from app.payments.events import PaymentEvent
from app.settings import KafkaSettings

log = logging.getLogger(__name__)


class PartitionFencedError(OrdersError):
    """Another member owns the partition now: its producer took over our transactional id."""


class TransactionFailedError(OrdersError):
    """A transaction was aborted (or its outcome is unknown); its events stay held back and
    the next round commits them again."""

    retriable = True


def transactional_id_for(group: str, topic: str, partition: int) -> str:
    """Stable per (group, input partition): whoever owns the partition fences the last owner."""
    return f"{group}-{topic}-{partition}"


class PartitionTransactions:
    def __init__(
        self,
        kafka: KafkaSettings,
        group: str,
        tp: TopicPartition,
        output_topic: str,
        timeout_s: float,
        read_committed_offset: Callable[[TopicPartition], Awaitable[int | None]],
    ) -> None:
        self.tp = tp
        self._kafka = kafka
        self._read_committed_offset = read_committed_offset
        self.transactional_id = transactional_id_for(group, tp.topic, tp.partition)
        self._group = group
        self._output_topic = output_topic
        self._timeout_s = timeout_s
        self._producer = self._new_producer()
        self._outcome_unknown = False  # the last transaction failed: committed or not?
        # Finished records not yet committed: offset -> its event (None: nothing to emit).
        # Bounded, though a stuck record holds every later one here: each entry is a record
        # the scheduler counts against max_buffered until the watermark passes it, and the
        # worker submits nothing while the held entries of all its partitions reach
        # max_buffered (PaymentsWorker._has_room: transactions failing for a while would
        # otherwise keep the watermark moving and this growing). So <= 2 x max_buffered.
        self._held: dict[int, PaymentEvent | None] = {}
        self.committed: int | None = None  # the last watermark committed by this producer
        self.fenced = False
        self.events_committed = 0
        self.transactions = 0

    def _new_producer(self) -> AIOKafkaProducer:
        kafka = self._kafka
        return AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-payments-{self.tp.partition}",
            transactional_id=self.transactional_id,
            enable_idempotence=True,
            acks="all",
            request_timeout_ms=kafka.request_timeout_ms,
            **kafka_client_security(kafka),
        )

    async def start(self) -> None:
        """init_transactions: fences the partition's previous owner (see the module docstring).
        It also waits until the previous owner's open transaction is completed or aborted, so
        the group's committed offset read after this is stable (what KIP-447's require_stable
        OffsetFetch gives newer clients)."""
        async with asyncio.timeout(self._timeout_s):
            await self._producer.start()

    def finished(self, offset: int, event: PaymentEvent | None) -> None:
        if not self.fenced:
            self._held[offset] = event

    @property
    def held(self) -> int:
        return len(self._held)

    async def commit_to(self, watermark: int) -> int:
        """Commit the events below `watermark` and the offset `watermark`, in one transaction;
        returns how many events it made visible. Raises PartitionFencedError (never retry) or
        TransactionFailedError (the next round retries)."""
        if self.fenced:
            msg = f"partition {self.tp.partition} was fenced"
            raise PartitionFencedError(msg)
        if self._outcome_unknown:
            await self._recover()
        if self.committed is not None and watermark <= self.committed:
            return 0
        offsets = sorted(offset for offset in self._held if offset < watermark)
        events = [e for e in (self._held[o] for o in offsets) if e is not None]
        producer = self._producer
        try:
            # Bounded: an idempotent producer's batches never expire (aiokafka pitfall).
            async with asyncio.timeout(self._timeout_s):
                await producer.begin_transaction()
                try:
                    sent = [
                        await producer.send(self._output_topic, e.value(), key=e.key())
                        for e in events
                    ]
                    await asyncio.gather(*sent)
                    await producer.send_offsets_to_transaction(
                        {self.tp: OffsetAndMetadata(watermark, "")}, self._group
                    )
                    await producer.commit_transaction()
                except ProducerFenced:
                    raise
                except BaseException:
                    await self._abort()
                    raise
        except ProducerFenced as exc:
            # The new owner's init_transactions bumped the epoch: our transaction is refused,
            # and retrying could only be refused again. Drop the partition's work.
            self._fence()
            msg = f"partition {self.tp.partition}: {self.transactional_id} fenced by a new owner"
            raise PartitionFencedError(msg) from exc
        except (KafkaError, TimeoutError) as exc:
            # A commit that timed out may have committed (the broker had the EndTxn): sending
            # the held events again could show them twice. _recover finds out first.
            self._outcome_unknown = True
            msg = f"partition {self.tp.partition}: transaction to {watermark} failed: {exc!r}"
            raise TransactionFailedError(msg) from exc
        for offset in offsets:
            del self._held[offset]
        self.committed = watermark
        self.events_committed += len(events)
        self.transactions += 1
        return len(events)

    async def _abort(self) -> None:
        """Best effort: the events of an aborted transaction are never visible to read_committed
        readers; an abort that fails leaves the transaction to the next owner's init (or to the
        broker's transaction timeout)."""
        with contextlib.suppress(KafkaError, TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(self._timeout_s):
                await self._producer.abort_transaction()

    async def _recover(self) -> None:
        """After a failed transaction: a fresh producer with the same transactional id (its
        init_transactions completes or aborts whatever the old one left open), then the group's
        committed offset, stable now, says how far the failed transaction got."""
        with contextlib.suppress(KafkaError, TimeoutError):
            async with asyncio.timeout(self._timeout_s):
                await self._producer.stop()
        self._producer = self._new_producer()
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._producer.start()
                stable = await self._read_committed_offset(self.tp)
        except ProducerFenced as exc:
            self._fence()
            msg = f"partition {self.tp.partition}: fenced while recovering"
            raise PartitionFencedError(msg) from exc
        except (KafkaError, TimeoutError) as exc:
            msg = f"partition {self.tp.partition}: could not recover its producer: {exc!r}"
            raise TransactionFailedError(msg) from exc
        if stable is not None:
            for offset in [o for o in self._held if o < stable]:
                del self._held[offset]
            self.committed = stable
        self._outcome_unknown = False
        log.info("partition %d: producer recovered, committed at %s", self.tp.partition, stable)

    def _fence(self) -> None:
        self.fenced = True
        self._held.clear()

    async def close(self) -> None:
        self._held.clear()
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._producer.stop()
        except (KafkaError, TimeoutError) as exc:
            log.warning("partition %d: producer did not stop cleanly: %r", self.tp.partition, exc)

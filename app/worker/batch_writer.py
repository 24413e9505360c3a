"""One batch, one PostgreSQL transaction: everything a batch changes commits together or not at all.

In one transaction the batch
1. locks this group's position row of every partition in the batch (in partition order) and
   checks the fence: a partition's records count only if its stored position is exactly where
   the batch begins. Otherwise another member (or a newer generation of this one) has moved on,
   and this batch is a zombie's late write: its records for that partition are dropped;
2. inserts the new orders (app.worker.order_store), isolating any that PostgreSQL refuses for
   their data;
3. dead-letters the poison and the refused orders (acks=all), while it holds the locks, so a
   fenced batch dead-letters nothing; letters the dead-letter topic cannot take are quarantined
   in PostgreSQL instead, in this same transaction;
4. records the offsets it passed with no record (markers, aborted transactions);
5. moves each unfenced position to the end of the batch.
PostgreSQL is the source of truth for offsets; the Kafka commit that follows only mirrors it.
A crash anywhere before COMMIT redoes the batch; after it, nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka.errors import KafkaError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import quarantine
from app.db.positions import advance_positions, claim_partitions
from app.worker import faults
from app.worker.dlq_publisher import DeadLetterPublisher, Letter, Undeliverable
from app.worker.failures import describe
from app.worker.order_store import IncomingOrder, insert_orders
from app.worker.records import OffsetGap, PreparedBatch

log = logging.getLogger(__name__)

GAP_REASON = "no record to process (transaction marker, aborted transaction or compaction)"


@dataclass
class BatchOutcome:
    fenced: dict[int, int] = field(default_factory=dict)  # partition -> its stored position
    written: PreparedBatch | None = None  # the part of the batch that was not fenced
    inserted: int = 0
    stored: Sequence[IncomingOrder] = ()  # the orders newly inserted (`inserted` of them)
    duplicates: int = 0  # orders of the batch that were stored already (redeliveries)
    dead_lettered: int = 0
    quarantined: int = 0
    skipped_offsets: int = 0


@dataclass(frozen=True)
class Scope:
    group_id: str
    topic: str
    owner: str


class BatchWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        dead_letters: DeadLetterPublisher,
        scope: Scope,
        quarantine_after_s: float,
    ) -> None:
        self._engine = engine
        self._dead_letters = dead_letters
        self._scope = scope
        self._quarantine_after_s = quarantine_after_s

    async def write(self, prepared: PreparedBatch) -> BatchOutcome:
        scope = self._scope
        ids = {"group_id": scope.group_id, "topic": scope.topic, "owner": scope.owner}
        outcome = BatchOutcome()
        async with self._engine.begin() as connection:
            stored = await claim_partitions(connection, **ids, spans=prepared.spans)
            outcome.fenced = {
                s.partition: stored[s.partition]
                for s in prepared.spans
                if stored[s.partition] != s.start
            }
            batch = prepared.only({s.partition for s in prepared.spans} - set(outcome.fenced))
            outcome.written = batch
            if not batch.spans:
                return outcome
            inserted = await insert_orders(connection, batch.orders)
            letters = [Letter(p.record, p.error) for p in batch.poison]
            letters += [Letter(r.order.record, r.error) for r in inserted.refused]
            undeliverable = await self._dead_letter(letters)
            if letters:
                faults.hit("after_dead_letter")
            await self._quarantine(connection, undeliverable)
            await self._record_gaps(connection, batch.gaps)
            await advance_positions(connection, **ids, spans=batch.spans)
            faults.hit("inside_db_transaction")
        outcome.inserted = inserted.inserted
        outcome.stored = inserted.stored
        outcome.duplicates = len(batch.orders) - inserted.inserted - len(inserted.refused)
        outcome.dead_lettered = len(letters) - len(undeliverable)
        outcome.quarantined = len(undeliverable)
        outcome.skipped_offsets = sum(gap.end - gap.start for gap in batch.gaps)
        return outcome

    async def _dead_letter(self, letters: list[Letter]) -> list[Undeliverable]:
        try:
            return await self._dead_letters.publish(letters)
        except (TimeoutError, KafkaError, OSError) as exc:
            down = self._dead_letters.unreachable_for()
            if down < self._quarantine_after_s:
                raise  # transient: the batch is retried, and the topic may be back by then
            log.error(  # noqa: TRY400 - the error is in the line; its traceback says nothing
                "dead-letter topic unreachable for %.0fs (%r): quarantining %d record(s) in "
                "PostgreSQL",
                down,
                exc,
                len(letters),
            )
            reason = f"dead-letter topic unreachable for {down:.0f}s: {exc!r}"
            return [Undeliverable(letter, reason) for letter in letters]

    async def _quarantine(
        self, connection: AsyncConnection, undeliverable: list[Undeliverable]
    ) -> None:
        if not undeliverable:
            return
        for item in undeliverable:
            record = item.letter.record
            log.error(
                "record %s/%d@%d quarantined in PostgreSQL (%s): %r",
                record.topic,
                record.partition,
                record.offset,
                item.reason,
                item.letter.error,
            )
        await quarantine.insert_quarantined(
            connection,
            [
                quarantine.quarantined_row(
                    self._scope.group_id,
                    item.letter.record,
                    item.letter.error,
                    item.reason,
                    self._scope.owner,
                    message=describe(item.letter.error),
                )
                for item in undeliverable
            ],
        )

    async def _record_gaps(self, connection: AsyncConnection, gaps: list[OffsetGap]) -> None:
        for gap in gaps:
            log.warning(
                "partition %d: offsets %d to %d hold %s; passed",
                gap.partition,
                gap.start,
                gap.end - 1,
                GAP_REASON,
            )
        await quarantine.record_skipped_ranges(
            connection,
            self._scope.group_id,
            self._scope.topic,
            [(gap.partition, gap.start, gap.end) for gap in gaps],
            GAP_REASON,
            self._scope.owner,
        )

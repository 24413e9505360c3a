"""Where the consumer stood on each partition just before and just after a fetch.

A fetched partition's records say which offsets hold records, not which offsets the fetch
covered: Kafka passes transaction markers, aborted transactions (under read_committed) and
compacted records without returning anything for them. The consumer's own position does know:
a fetch starting at position P returns records from P on, and leaves the position after the last
offset it passed. Those two positions are the exact span of the batch, gaps included.

They are exact only if nothing moved the position during the fetch: a seek (ours) or a
rebalance. Every such move is counted here; a fetch during which the count changed, or the
assignment was replaced, reports no positions, and the caller falls back on the records' own
offsets (which the fence then checks, as before). Such a fetch may also have passed offsets
without records that nobody accounted for (a trailing transaction marker): `reconcile()`, called
when the member is idle, seeks every partition whose position is not where the batches left it
back there, and the next fetch covers those offsets exactly. Seeking back is always safe: the
fence refuses whatever does not begin at the stored position.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
Batch: TypeAlias = dict[TopicPartition, list[Record]]
Bounds: TypeAlias = dict[TopicPartition, tuple[int | None, int | None]]


class FetchPositions:
    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self._moves = 0
        # Where each partition's position should be, given the batches handed out so far.
        self._accounted: dict[TopicPartition, int] = {}

    def moved(self) -> None:
        """Call on every seek and every rebalance callback."""
        self._moves += 1

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.moved()
        self._consumer.seek(tp, offset)
        self._accounted[tp] = offset

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """No longer ours, or positioned by Kafka rather than by us: nothing to account for."""
        for tp in partitions:
            self._accounted.pop(tp, None)

    def reconcile(self) -> list[TopicPartition]:
        """Seek each partition whose position is not accounted for back to where it should be
        (call only while no batch is in flight); returns those partitions."""
        assignment = self._assignment()
        strays = [
            tp
            for tp, position in self._positions(assignment).items()
            if tp in self._accounted and self._accounted[tp] != position
        ]
        for tp in strays:
            self.seek(tp, self._accounted[tp])
        return strays

    async def getmany(self, timeout_ms: int, max_records: int) -> tuple[Batch, Bounds]:
        """`getmany`, with each returned partition's (position before, position after)."""
        moves, assignment = self._moves, self._assignment()
        before = self._positions(assignment)
        batch: Batch = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        # Nothing else has run since getmany returned: the positions are those it left.
        if self._moves != moves or self._assignment() is not assignment:
            for tp, records in batch.items():
                if records:
                    self._accounted[tp] = records[-1].offset + 1
            return batch, {}
        after = self._positions(assignment)
        self._accounted.update(after)
        # Also the partitions the fetch moved past offsets without returning a record (a
        # trailing transaction marker): their position must move too, or it lags forever.
        moved = {tp for tp, position in after.items() if before.get(tp, position) != position}
        return batch, {tp: (before.get(tp), after.get(tp)) for tp in moved | set(batch)}

    def has_position(self, tp: object) -> bool:
        assignment = self._assignment()
        if assignment is None or tp not in assignment.tps:
            return True  # not ours (any more): nothing to position
        state = assignment.state_value(tp)
        return bool(state.has_valid_position or state.awaiting_reset)

    def _assignment(self) -> Any:
        # aiokafka has no synchronous public position(); its subscription state holds it.
        subscription = self._consumer._subscription.subscription
        return None if subscription is None else subscription.assignment

    @staticmethod
    def _positions(assignment: Any) -> dict[TopicPartition, int]:
        if assignment is None:
            return {}
        positions = {}
        for tp in assignment.tps:
            state = assignment.state_value(tp)
            if state is not None and state.has_valid_position:
                positions[tp] = state.position
        return positions

"""Where the consumer stood on each partition just before and just after a fetch.

A fetched partition's records say which offsets hold records, not which offsets the fetch
covered: Kafka passes transaction markers, aborted transactions (under read_committed) and
compacted records without returning anything for them. The consumer's own position does know:
a fetch starting at position P returns records from P on, and leaves the position after the last
offset it passed. Those two positions are the exact span of the batch, gaps included.

The position before the fetch is exact unless something moved it during the fetch: a seek of
ours, or a rebalance. So each seek is remembered per partition, with the assignment it was made
on: a partition sought during the fetch starts at the offset it was sought to (aiokafka drops
whatever it had buffered for it, and any fetch response for another offset); one untouched keeps
its position from before; one whose start cannot be known (assigned anew and positioned by Kafka
itself) falls back on its records' own offsets, which the fence then checks. A fetch may also
have passed offsets without records that nobody accounted for: `reconcile()`, called when the
member is idle, seeks every partition whose position is not where the batches left it back
there, and the next fetch covers those offsets exactly. Seeking back is always safe: the fence
refuses whatever does not begin at the stored position.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
Batch: TypeAlias = dict[TopicPartition, list[Record]]
Bounds: TypeAlias = dict[TopicPartition, tuple[int | None, int | None]]


@dataclass(frozen=True)
class _Seek:
    offset: int | None  # None: positioned by Kafka (the log's beginning), offset not known here
    assignment: Any
    serial: int


class FetchPositions:
    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self._serial = 0
        self._seeks: dict[TopicPartition, _Seek] = {}
        # Where each partition's position should be, given the batches handed out so far.
        self._accounted: dict[TopicPartition, int] = {}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._consumer.seek(tp, offset)
        self._remember(tp, offset)
        self._accounted[tp] = offset

    def positioned_by_kafka(self, partitions: Iterable[TopicPartition]) -> None:
        """Call before asking Kafka to position these (seek_to_beginning)."""
        for tp in partitions:
            self._remember(tp, None)
            self._accounted.pop(tp, None)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """No longer ours: nothing to account for."""
        for tp in partitions:
            self._accounted.pop(tp, None)
            self._seeks.pop(tp, None)

    def positions(self) -> dict[TopicPartition, int]:
        return self._positions(self._assignment())

    def reconcile(self) -> list[TopicPartition]:
        """Seek each partition whose position is not accounted for back to where it should be
        (call only while no batch is in flight); returns those partitions."""
        strays = [
            tp
            for tp, position in self.positions().items()
            if tp in self._accounted and self._accounted[tp] != position
        ]
        for tp in strays:
            self.seek(tp, self._accounted[tp])
        return strays

    def rewind_all(self) -> list[TopicPartition]:
        """Seek every partition to where its batches ended (each seek also drops whatever
        aiokafka had buffered for it); returns the assigned partitions with no batch yet,
        which the caller positions afresh."""
        for tp, offset in list(self._accounted.items()):
            if tp in self._consumer.assignment():
                self.seek(tp, offset)
        return [tp for tp in self._consumer.assignment() if tp not in self._accounted]

    async def getmany_unless(
        self, stop: asyncio.Event, timeout_ms: int, max_records: int
    ) -> tuple[Batch, Bounds]:
        """`getmany()`, unless `stop` is set first (then nothing): getmany waits without bound
        while the group cannot finish a rebalance, and a member asked to stop must still drain
        and leave. Raises what getmany raises."""
        fetch = asyncio.ensure_future(self.getmany(timeout_ms, max_records))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({fetch, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not fetch.done():
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetch
            return {}, {}
        return fetch.result()

    async def position_from_kafka(self, partitions: Iterable[TopicPartition]) -> None:
        """Each partition at the group's committed offset in Kafka, else at the log's beginning
        (a new group reads the whole topic)."""
        fresh = []
        for tp in partitions:
            committed = await self._consumer.committed(tp)
            if committed is None:
                fresh.append(tp)
            else:
                self.seek(tp, committed)
        if fresh:
            self.positioned_by_kafka(fresh)
            await self._consumer.seek_to_beginning(*fresh)

    async def getmany(self, timeout_ms: int, max_records: int) -> tuple[Batch, Bounds]:
        """`getmany`, with each partition's (position it was fetched from, position after):
        every partition that returned records or moved, None where the start is not known."""
        serial, assignment = self._serial, self._assignment()
        before = self._positions(assignment)
        batch: Batch = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        # Nothing else has run since getmany returned: the positions are those it left.
        current = self._assignment()
        bounds: Bounds = {}
        for tp, end in self._positions(current).items():
            start = self._start(tp, serial, assignment, current, before)
            if batch.get(tp) or (start is not None and start != end):
                # With records, or moved past offsets without any (a trailing marker): its
                # position must move too, or it lags forever.
                bounds[tp] = (start, end)
                self._accounted[tp] = end
        return batch, bounds

    def _start(
        self,
        tp: TopicPartition,
        serial: int,
        assignment: Any,
        current: Any,
        before: dict[TopicPartition, int],
    ) -> int | None:
        seek = self._seeks.get(tp)
        if seek is not None and seek.serial > serial:  # sought while the fetch ran
            return seek.offset if seek.assignment is current else None
        return before.get(tp) if current is assignment else None

    def _remember(self, tp: TopicPartition, offset: int | None) -> None:
        self._serial += 1
        self._seeks[tp] = _Seek(offset, self._assignment(), self._serial)

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

"""Key-ordered parallel processing: the heart of Confluent Parallel Consumer's KEY ordering mode.

A plain consumer handles one record of a partition at a time, so a 50 ms call caps a partition
at 20 records/s. Kafka only promises order within a key (the producer's partitioner put each
customer on one partition), so records of DIFFERENT keys may run concurrently, and records of the
SAME key run strictly one after another, in offset order:

    submit(record) ──▶ its key's queue ──(key idle and a slot free)──▶ process(record)
                         one queue per key               at most max_in_flight at once

- Bounded: at most `max_in_flight` records in `process` at once, and at most `max_buffered`
  records held: submitted and not yet passed by their partition's commit watermark (queued,
  running, failed, or finished above an unfinished one). Counting until the watermark passes a
  record, not until it finishes, is what bounds memory behind one slow or failed record while
  other keys flow: the watermark's bookkeeping and whatever a caller holds until the commit
  (payments holds each record's event) stop growing there.
- Back-pressure: `submit` waits for room. A consumer in a group must not block its fetch loop
  longer than max.poll.interval.ms (the group would evict it): such a caller submits while
  `has_room()`, keeps the rest of its batch, pauses fetching and goes on polling until there is
  room (`wait_for_room`).
- Commits: per partition, the watermark is the lowest offset not finished (OffsetWatermark).
  The caller commits `watermark(partition)` and nothing beyond; a crash redoes what is above it.
- Failures: retrying is `process`'s policy (payments retries a retriable gateway error with
  back-off inside it and turns a final one into an outcome), so whatever `process` raises is a
  bug the scheduler cannot judge: it is logged with its traceback, the record's key is blocked
  (its later records wait: running them would break its order) and the partition's watermark
  stays at that offset: nothing of that partition is committed past it until the partition is
  revoked or the member restarts (then it is redone). Other keys go on until the buffer fills;
  then `submit` raises SchedulerStalledError. `failures` and `stalled_partitions()` show it.
- Revocation: `revoke(partitions)` takes no more records of them (a `submit` that waited for
  room while they were revoked drops its record), drops their queued records, lets their running
  ones finish for a grace period, then cancels them, and returns each partition's final
  watermark to commit; the next owner re-fetches from there.
- Records without a key have no order to keep: each runs as a key of its own.

Everything runs on the event loop's thread, and every state change happens between awaits, so
there are no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from app.errors import OrdersError
from app.payments.offset_watermark import OffsetWatermark

log = logging.getLogger(__name__)


class KeyedRecord(Protocol):
    """What the scheduler reads of a record (aiokafka's ConsumerRecord has these)."""

    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...


R = TypeVar("R", bound=KeyedRecord)


class SchedulerStalledError(OrdersError):
    """No buffered record can move: each waits behind a failed record of its key."""


class SchedulerTimeoutError(OrdersError):
    """Running records did not finish within the bound given."""

    retriable = True


@dataclass(frozen=True)
class Failure(Generic[R]):
    """A record whose `process` raised; its key waits until its partition is revoked."""

    record: R
    error: Exception


class KeyOrderedScheduler(Generic[R]):
    def __init__(
        self, process: Callable[[R], Awaitable[None]], *, max_in_flight: int, max_buffered: int
    ) -> None:
        if not 1 <= max_in_flight <= max_buffered:
            msg = f"need 1 <= max_in_flight ({max_in_flight}) <= max_buffered ({max_buffered})"
            raise ValueError(msg)
        self._process = process
        self._max_in_flight = max_in_flight
        self._max_buffered = max_buffered
        self._queues: dict[Hashable, deque[R]] = {}  # per key: submitted, not started
        self._running: dict[Hashable, tuple[asyncio.Task[None], R]] = {}  # at most one per key
        self._ready: deque[Hashable] = deque()  # keys that may start, waiting for a slot
        self._blocked: dict[Hashable, Failure[R]] = {}
        self._partitions: dict[int, OffsetWatermark] = {}
        self._buffered = 0  # submitted, not yet passed by their partition's watermark
        self._revoking: dict[int, asyncio.Event] = {}  # inside revoke(); set when it is done
        self._revocations: dict[int, int] = {}  # per partition: revoke() calls begun
        self._changed = asyncio.Event()  # set at every completion; waiters re-check
        self.peak_in_flight = 0

    # --- the loop that makes the mode what it is -------------------------------------------

    async def submit(self, record: R) -> bool:
        """Queue a record (offsets increasing per partition); waits while the buffer is full.
        False: dropped, as its partition is being revoked or was revoked while it waited."""
        partition = record.partition
        if partition in self._revoking:
            return False  # the partition's next owner fetches it again
        revocations = self._revocations.get(partition, 0)
        await self._room()
        if partition in self._revoking or self._revocations.get(partition, 0) != revocations:
            return False  # the partition's next owner fetches it again
        self._partitions.setdefault(partition, OffsetWatermark()).take(record.offset)
        self._buffered += 1
        key = _key_of(record)
        queue = self._queues.setdefault(key, deque())
        queue.append(record)
        if len(queue) == 1 and key not in self._running and key not in self._blocked:
            self._ready.append(key)
            self._start_ready()
        return True

    def _start_ready(self) -> None:
        while self._ready and len(self._running) < self._max_in_flight:
            key = self._ready.popleft()
            queue = self._queues[key]
            record = queue.popleft()
            if not queue:
                del self._queues[key]
            watermark = self._partitions[record.partition]
            task = asyncio.create_task(self._run(key, record, watermark))
            self._running[key] = (task, record)
        self.peak_in_flight = max(self.peak_in_flight, len(self._running))

    async def _run(self, key: Hashable, record: R, watermark: OffsetWatermark) -> None:
        try:
            await self._process(record)
        except asyncio.CancelledError:
            self._settle(key, record, watermark, error=None, finished=False)
            raise
        except Exception as exc:  # any failure: blocks its key, observably (module docstring)
            self._settle(key, record, watermark, error=exc, finished=False)
        else:
            self._settle(key, record, watermark, error=None, finished=True)

    def _settle(
        self,
        key: Hashable,
        record: R,
        watermark: OffsetWatermark,
        error: Exception | None,
        finished: bool,
    ) -> None:
        del self._running[key]
        # A record of a partition revoked meanwhile counts for nothing here any more; one
        # cancelled by revoke() stays unfinished until revoke() forgets its partition.
        current = self._partitions.get(record.partition) is watermark
        if current and error is not None:
            log.error(
                "processing %s[%d]@%d raised: a bug (process decides retries); its key waits "
                "and nothing of partition %d is committed past %d until it is revoked",
                key,
                record.partition,
                record.offset,
                record.partition,
                record.offset,
                exc_info=error,
            )
            self._blocked[key] = Failure(record, error)
        elif current and finished:
            self._buffered -= watermark.finish(record.offset)
        if key in self._queues and key not in self._blocked:
            self._ready.append(key)  # behind keys already waiting: each key gets its turn
        self._start_ready()
        self._changed.set()

    # --- commits, rebalances, shutdown ----------------------------------------------------

    def watermark(self, partition: int) -> int | None:
        """The offset to commit for `partition`: every offset below it is done."""
        state = self._partitions.get(partition)
        return None if state is None else state.value

    def watermarks(self) -> dict[int, int]:
        return {p: w.value for p, w in self._partitions.items() if w.value is not None}

    def fetched_to(self, partition: int, position: int) -> None:
        """The consumer's position after a fetch: offsets below it that carried no record
        (transaction markers, aborted or compacted records) need no processing."""
        self._partitions.setdefault(partition, OffsetWatermark()).passed_to(position)

    async def revoke(self, partitions: Iterable[int], grace_s: float) -> dict[int, int]:
        """Give up `partitions`: take no more of their records, drop their queued ones, let their
        running ones finish for `grace_s`, cancel the rest; returns each one's final watermark
        (commit it now). A partition another revoke() is already giving up is left to that call
        (awaited, not reported)."""
        asked = set(partitions)
        earlier = {self._revoking[p] for p in asked if p in self._revoking}
        revoked = asked - self._revoking.keys()
        done = asyncio.Event()
        for partition in revoked:
            self._revoking[partition] = done
            self._revocations[partition] = self._revocations.get(partition, 0) + 1
        try:
            self._drop_queued(revoked)
            await self._stop_running(revoked, grace_s)
            # submit() takes nothing of theirs meanwhile; should anything have slipped in, it
            # must not outlive the revocation either.
            self._drop_queued(revoked)
            await self._stop_running(revoked, 0)
        finally:
            for partition in revoked:
                del self._revoking[partition]
            done.set()
        final: dict[int, int] = {}
        for partition in revoked:
            state = self._partitions.pop(partition, None)
            if state is not None:
                self._buffered -= state.pending
                if state.value is not None:
                    final[partition] = state.value
        for key, failure in list(self._blocked.items()):
            if failure.record.partition in revoked:
                del self._blocked[key]
                if key in self._queues and key not in self._running:
                    self._ready.append(key)
        self._start_ready()
        self._changed.set()
        for event in earlier:
            await event.wait()
        return final

    def _drop_queued(self, partitions: set[int]) -> None:
        for key in list(self._queues):
            kept = deque(r for r in self._queues[key] if r.partition not in partitions)
            if kept:
                self._queues[key] = kept
            else:
                del self._queues[key]
        self._ready = deque(key for key in self._ready if key in self._queues)

    async def _stop_running(self, partitions: set[int], grace_s: float) -> None:
        tasks = [task for task, record in self._running.values() if record.partition in partitions]
        if tasks and grace_s > 0:
            await asyncio.wait(tasks, timeout=grace_s)
        late = [task for task in tasks if not task.done()]
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=max(grace_s, 1.0))

    async def drain(self, timeout: float) -> None:
        """Wait until every record that can run has finished (blocked keys excepted)."""
        try:
            async with asyncio.timeout(timeout):
                while self._running or self._ready:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            msg = f"{len(self._running)} records still running after {timeout:.1f}s"
            raise SchedulerTimeoutError(msg) from None

    async def close(self, timeout: float) -> None:
        """Cancel everything running and forget everything queued."""
        tasks = [task for task, _ in self._running.values()]
        self._queues.clear()
        self._ready.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    # --- what a caller or a test observes ------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def buffered(self) -> int:
        return self._buffered

    @property
    def failures(self) -> list[Failure[R]]:
        return list(self._blocked.values())

    def stalled_partitions(self) -> dict[int, Failure[R]]:
        """Partitions whose commits a failed record holds back, with the lowest such record:
        their watermark cannot pass it until the partition is revoked (then it is redone)."""
        stalled: dict[int, Failure[R]] = {}
        for failure in self._blocked.values():
            lowest = stalled.get(failure.record.partition)
            if lowest is None or failure.record.offset < lowest.record.offset:
                stalled[failure.record.partition] = failure
        return stalled

    def has_room(self) -> bool:
        """Whether `submit` would take a record now without waiting."""
        return self._buffered < self._max_buffered

    async def wait_for_room(self, timeout: float) -> bool:
        """Wait up to `timeout` for room (a caller polling a paused consumer meanwhile);
        raises SchedulerStalledError when only failed records hold the buffer."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._room()
        return self.has_room()

    async def _room(self) -> None:
        while self._buffered >= self._max_buffered:
            # A revocation under way frees its partitions' records when it ends.
            if not self._running and not self._ready and not self._revoking:
                raise SchedulerStalledError(self._stall_message())
            self._changed.clear()
            await self._changed.wait()

    def _stall_message(self) -> str:
        failed = ", ".join(
            f"{f.record.partition}@{f.record.offset}: {f.error!r}" for f in self.failures[:3]
        )
        return (
            f"the buffer's {self._buffered} records wait behind, or finished above, "
            f"{len(self._blocked)} failed record(s) ({failed}); revoke their partitions or "
            "restart from the watermarks"
        )


def _key_of(record: KeyedRecord) -> Hashable:
    key = record.key
    return key if key is not None else (record.partition, record.offset)

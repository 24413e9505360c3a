"""The worker's stall detector: every WORKER_LAG_INTERVAL_S, for the partitions this member owns,
sample the log end and the position stored in PostgreSQL, judge each partition with Burrow's rules
(app.lag_status), and report it: the lag and status gauges, one log line per change of status
with the cause the member knows (app.worker.conditions), and /readyz (app.worker.readiness).

It runs beside the batch loop as a task of its own and never stops it: a broker or database that
cannot be read is logged once and the last samples are kept, because a position that cannot be
read has not moved (the member cannot store either), so a long outage does end as STALLED.

The log end is the consumer's own `end_offsets`: under read_committed, the last stable offset,
the same bound the member's fetches see. Positions and their age come from PostgreSQL, on its own
clock (app.db.positions.read_position_ages).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiokafka.structs import TopicPartition

from app.db.positions import StoredPosition, read_position_ages
from app.lag_status import PartitionHistory, Sample, Status
from app.worker.readiness import is_ready

if TYPE_CHECKING:
    from app.settings import Settings
    from app.worker.consumer import OrderWorker
    from app.worker.metrics import NoMetrics

log = logging.getLogger(__name__)

_STALLED = (Status.STALLED, Status.STOPPED)


class StallDetector:
    def __init__(
        self,
        worker: OrderWorker,
        settings: Settings,
        metrics: NoMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._worker = worker
        self._metrics = metrics
        self._clock = clock
        config = settings.worker
        self._group, self._topic = config.group_id, settings.kafka.orders_topic
        self._interval = config.lag_interval_s
        self._window = config.lag_window
        self._stall_after = config.stall_after_s
        self._unready_after = config.unready_after_stall_s
        self._timeout = config.commit_timeout_s
        self._histories: dict[int, PartitionHistory] = {}
        self._statuses: dict[int, Status] = {}
        self._stalled_since: dict[int, float] = {}  # when each stall was first seen
        self._failing: set[str] = set()  # the reads failing now: logged once per streak
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Sample every interval until `stop()`; never raises."""
        while not self._stopping.is_set():
            try:
                await self.sample()
            except Exception:
                log.exception("stall detector: a sample failed; sampling again next interval")
            self.ready()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)
        self.ready()  # stopping: 0

    def stop(self) -> None:
        self._stopping.set()

    def ready(self) -> bool:
        """The /readyz rule (app.worker.readiness) on what the last samples showed; also sets
        orders_worker_ready."""
        owned = {tp.partition for tp in self._worker.owned_partitions()}
        ready = is_ready(
            joined=self._worker.joined,
            stopping=self._worker.stopping,
            stalled_since={p: t for p, t in self._stalled_since.items() if p in owned},
            now=self._clock(),
            unready_after_s=self._unready_after,
        )
        self._metrics.ready(ready)
        return ready

    def status(self, partition: int) -> Status | None:
        return self._statuses.get(partition)

    async def sample(self) -> None:
        owned = self._worker.owned_partitions()
        self._forget(set(self._histories) - {tp.partition for tp in owned})
        if not owned:
            return
        ends = await self._log_ends(owned)
        stored = await self._positions([tp.partition for tp in owned])
        now = self._clock()
        # Revoked while we read: those are another member's to report now.
        still_owned = {tp.partition for tp in self._worker.owned_partitions()}
        self._forget(set(self._histories) - still_owned)
        owner_idle_s = None
        if stored is not None:
            # Every owned partition counts, caught-up ones too (see lag_report.owner_idle).
            idle = [s.idle_s for p, s in stored.items() if p in still_owned]
            owner_idle_s = min(idle) if idle else None
        for tp in owned:
            if tp.partition in still_owned:
                self._judge(tp, ends, stored, now, owner_idle_s)

    def _judge(
        self,
        tp: TopicPartition,
        ends: dict[TopicPartition, int],
        stored: dict[int, StoredPosition] | None,
        now: float,
        owner_idle_s: float | None,
    ) -> None:
        partition = tp.partition
        history = self._histories.get(partition)
        if history is None:
            history = self._histories[partition] = PartitionHistory(self._window)
        last = history.latest
        log_end = ends.get(tp, last.log_end if last is not None else None)
        if stored is None:  # unreadable: the position has not moved
            position, idle = (last.position if last is not None else None), None
        else:
            found = stored.get(partition)  # none: never processed, from the log's start
            position, idle = (found.next_offset, found.idle_s) if found else (0, None)
        if log_end is None or position is None:
            return  # nothing known of this partition yet
        history.add(Sample(now, log_end, position, idle))
        status = history.status(now, self._stall_after, owner_idle_s)
        stalled = status in _STALLED
        if stalled:
            self._stalled_since.setdefault(partition, now)
        else:
            self._stalled_since.pop(partition, None)
        self._metrics.partition_status(
            partition,
            lag=log_end - position if log_end > position else 0,
            stalled=stalled,
            lag_growing=status is Status.WARNING,
        )
        self._log_transition(partition, history, status, now)

    def _log_transition(
        self, partition: int, history: PartitionHistory, status: Status, now: float
    ) -> None:
        before = self._statuses.get(partition, Status.OK)
        self._statuses[partition] = status
        if status is before:
            return
        latest = history.latest
        assert latest is not None  # judged on a sample just added
        if status is Status.OK:
            log.info(
                "partition %d OK again (was %s): lag %d, stored position %d",
                partition,
                before,
                latest.lag,
                latest.position,
            )
            return
        moved_at = history.moved_at if history.moved_at is not None else now
        log.warning(
            "partition %d %s: lag %d, stored position %d unmoved for %.0fs "
            "(processing %s/s, produced %s/s); cause: %s",
            partition,
            status,
            latest.lag,
            latest.position,
            now - moved_at,
            _rate(history.processing_rate),
            _rate(history.produce_rate),
            self._worker.conditions.cause(partition),
        )

    def _forget(self, partitions: set[int]) -> None:
        if not partitions:
            return
        for partition in partitions:
            self._histories.pop(partition, None)
            self._statuses.pop(partition, None)
            self._stalled_since.pop(partition, None)
        self._metrics.forget_partitions(partitions)

    async def _log_ends(self, owned: list[TopicPartition]) -> dict[TopicPartition, int]:
        try:
            async with asyncio.timeout(self._timeout):
                ends = await self._worker.log_ends(owned)
        except Exception as exc:
            self._failed("broker", f"could not read the log ends ({exc!r}); keeping the last ones")
            return {}
        self._recovered("broker", "log ends readable again")
        return ends

    async def _positions(self, partitions: list[int]) -> dict[int, StoredPosition] | None:
        try:
            async with asyncio.timeout(self._timeout):
                async with self._worker.engine.connect() as connection:
                    stored = await read_position_ages(
                        connection, self._group, self._topic, partitions
                    )
        except Exception as exc:
            self._worker.conditions.note("database", f"database unreachable ({exc!r})")
            self._failed(
                "database",
                f"could not read the stored positions ({exc!r}); counting them as unmoved",
            )
            return None
        self._worker.conditions.clear("database")
        self._recovered("database", "stored positions readable again")
        return stored

    def _failed(self, what: str, message: str) -> None:
        if what not in self._failing:
            self._failing.add(what)
            log.warning("stall detector: %s", message)

    def _recovered(self, what: str, message: str) -> None:
        if what in self._failing:
            self._failing.discard(what)
            log.info("stall detector: %s", message)


def _rate(rate: float | None) -> str:
    return "?" if rate is None else f"{rate:.1f}"

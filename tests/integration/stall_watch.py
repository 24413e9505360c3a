"""A watch on a group's progress: no partition may sit still while it has lag.

Every half second it reads the group's stored positions (PostgreSQL) and the log end offsets
(Kafka). A partition with lag whose position has not moved for longer than the limit is stalled:
what a record that fails the same way forever does to its partition (on the old main, a NUL
accepted with a 202 held every partition of every worker that fetched it, for good).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from app.settings import Settings
from tests.integration.oracle import stored_positions


@dataclass(frozen=True)
class Stall:
    partition: int
    position: int
    log_end: int
    still_for_s: float


@dataclass
class StallRule:
    """The pure rule, fed one sample at a time."""

    limit_s: float
    stalls: dict[int, Stall] = field(default_factory=dict)  # the longest, per partition
    regressions: list[tuple[int, int, int]] = field(default_factory=list)
    longest_wait_s: float = 0.0  # with lag and no move, over every partition (for the report)
    samples: int = 0
    positions: dict[int, int] = field(default_factory=dict)
    ends: dict[int, int] = field(default_factory=dict)
    _still_since: dict[int, float] = field(default_factory=dict)

    def observe(self, now: float, positions: dict[int, int], ends: dict[int, int]) -> None:
        """`positions` must be read before `ends`, so that a position is never past its end."""
        for partition, end in ends.items():
            position = positions.get(partition, 0)  # no row yet: the group starts at 0
            before = self.positions.get(partition)
            if before is not None and position < before:
                self.regressions.append((partition, before, position))
            if position >= end:
                self._still_since.pop(partition, None)
            elif position != before or partition not in self._still_since:
                self._still_since[partition] = now  # it moved, or its lag just began
            else:
                still = now - self._still_since[partition]
                self.longest_wait_s = max(self.longest_wait_s, still)
                worst = self.stalls.get(partition)
                if still > self.limit_s and (worst is None or still > worst.still_for_s):
                    self.stalls[partition] = Stall(partition, position, end, round(still, 1))
        self.positions = dict(positions)
        self.ends = dict(ends)
        self.samples += 1

    @property
    def caught_up(self) -> bool:
        """At the last sample, every partition that holds records had its position at the end."""
        return self.samples > 0 and all(
            self.positions.get(partition) == end for partition, end in self.ends.items() if end
        )


@asynccontextmanager
async def watching_for_stalls(
    engine: AsyncEngine, settings: Settings, limit_s: float, interval_s: float = 0.5
) -> AsyncIterator[StallRule]:
    topic, group = settings.kafka.orders_topic, settings.worker.group_id
    partitions = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    rule = StallRule(limit_s)

    async def sample_forever() -> None:
        loop = asyncio.get_running_loop()
        while True:
            positions = await stored_positions(engine, group, topic)
            ends = await consumer.end_offsets(partitions)
            rule.observe(loop.time(), positions, {tp.partition: end for tp, end in ends.items()})
            await asyncio.sleep(interval_s)

    sampling = asyncio.create_task(sample_forever())
    try:
        yield rule
    finally:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling  # a sampling error surfaces here
        await consumer.stop()

"""A consumer group of a few members in this process, recording the order it processes in.

The members are three (or two) AIOKafkaConsumers with one group id, each `subscribe`d, so the
broker shares the topic's partitions among them; each appends every record it processes to
one shared arrival list. A short sleep per record stands for the work of processing it: while
one member sleeps the others run, as separate consumers would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

from app.kafka_security import kafka_client_security
from app.lab.deadline import within
from app.lab.partitioning.measures import settled
from app.lab.partitioning.stream import Placed
from app.operations.kafka_clients import bounded
from app.settings import KafkaSettings

# A member notices a rebalance at its next heartbeat: short, so the group settles in seconds.
HEARTBEAT_MS = 250
SESSION_TIMEOUT_MS = 6000


class _Holdings(ConsumerRebalanceListener):  # type: ignore[misc]
    """Keeps `held[member]` equal to the partitions that member holds right now."""

    def __init__(self, held: list[set[int]], member: int, changed: asyncio.Event) -> None:
        self.held = held
        self.member = member
        self.changed = changed

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.held[self.member] = set()
        self.changed.set()

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.held[self.member] = {tp.partition for tp in assigned}
        self.changed.set()


class Group:
    def __init__(self, settings: KafkaSettings, members: list[AIOKafkaConsumer]) -> None:
        self.settings = settings
        self.members = members
        self.held: list[set[int]] = [set() for _ in members]
        self.changed = asyncio.Event()  # set by a member's rebalance callbacks
        self.arrivals: list[Placed] = []  # (customer, seq) in the order the group processed them

    async def wait_settled(self, partitions: int, seconds: float) -> None:
        """Until every member holds partitions and together they hold them all.

        Producing before this would measure a different group: the first member to join is
        given all the partitions and processes them alone, serially, in the order they were
        fetched; the others then take partitions away from it in one rebalance after another.
        """
        async with within(self.settings, "the consumer group settling", seconds):
            while not settled(self.held, partitions):
                await self.changed.wait()
                self.changed.clear()

    async def consume(self, expected: int, delay_s: float, seconds: float) -> None:
        """Every member processes what it is given until the group has seen `expected`
        different records."""
        seen: set[Placed] = set()

        async def member(consumer: AIOKafkaConsumer) -> None:
            while len(seen) < expected:
                fetched = await consumer.getmany(timeout_ms=100)
                for records in fetched.values():  # partition by partition, each in its order
                    for record in records:
                        await asyncio.sleep(delay_s)  # the work: the other members run now
                        placed = Placed.decode(record.value)
                        self.arrivals.append(placed)
                        seen.add(placed)

        async with within(self.settings, f"consuming {expected} records", seconds):
            await asyncio.gather(*(member(consumer) for consumer in self.members))


@asynccontextmanager
async def consumer_group(
    settings: KafkaSettings, topic: str, group_id: str, members: int
) -> AsyncIterator[Group]:
    """`members` consumers in `group_id`, subscribed to `topic`, left when done."""
    consumers = [
        AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=group_id,
            client_id=f"{settings.client_id}-lab-{member}",
            # No commits: the group lives for one run, and reads its topic from the start.
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            heartbeat_interval_ms=HEARTBEAT_MS,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            request_timeout_ms=settings.request_timeout_ms,
            **kafka_client_security(settings),
        )
        for member in range(members)
    ]
    group = Group(settings, consumers)
    try:
        for member, consumer in enumerate(consumers):
            await bounded(settings, f"starting consumer {member} of {group_id}", consumer.start())
            consumer.subscribe([topic], listener=_Holdings(group.held, member, group.changed))
        yield group
    finally:
        for consumer in consumers:
            # Leaving must not hide the run's result, nor wait for a broker that is gone.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), settings.request_timeout_ms / 1000)

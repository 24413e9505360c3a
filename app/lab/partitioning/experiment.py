"""One run per strategy: a topic of its own, a settled consumer group, the same stream of orders
produced through the strategy's partitioner, then what landed where and in what order it was
processed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from app.batching import partition_for
from app.kafka_security import kafka_client_security
from app.lab.deadline import within
from app.lab.partitioning.group import consumer_group
from app.lab.partitioning.measures import (
    Ordering,
    ordering,
    records_per_partition,
)
from app.lab.partitioning.partitioners import (
    DEDICATED_PARTITION,
    PriorityPartitioner,
    RoundRobinPartitioner,
)
from app.lab.partitioning.stream import Placed, customer_ids, is_priority, order_stream
from app.lab.workspace import LabWorkspace
from app.operations.kafka_clients import bounded
from app.settings import KafkaSettings

PARTITIONS = 6  # the course's `topic create orders --partitions 6`
# The work each record stands for; while one member sleeps the others run (2 ms: 600 records
# take ~0.4 s per member of three).
PROCESSING_DELAY_S = 0.002
SETTLE_S = 30.0  # a group of three settles in a few seconds; this bound only stops a hang

Partitioner = Callable[[bytes | None, list[int], list[int]], int]


@dataclass(frozen=True)
class Strategy:
    name: str
    keyed: bool  # whether the customer id is the record's key
    # A new partitioner per producer: round-robin's counter is the producer's own.
    partitioner: Callable[[], Partitioner]


STRATEGIES = (
    Strategy("keyless_aiokafka", keyed=False, partitioner=DefaultPartitioner),
    Strategy("round_robin", keyed=False, partitioner=RoundRobinPartitioner),
    Strategy("keyed_murmur2", keyed=True, partitioner=DefaultPartitioner),
    Strategy("priority", keyed=True, partitioner=PriorityPartitioner),
)


@dataclass(frozen=True)
class PartitioningOutcome:
    strategy: Strategy
    landed: list[tuple[Placed, int]]  # each record and the partition the broker stored it in
    ordering: Ordering
    held: list[list[int]]  # each member's partitions while it consumed

    @property
    def per_partition(self) -> list[int]:
        return records_per_partition((partition for _, partition in self.landed), PARTITIONS)

    @property
    def vip_off_dedicated(self) -> int:
        return sum(
            1 for p, at in self.landed if is_priority(p.customer) and at != DEDICATED_PARTITION
        )

    @property
    def others_on_dedicated(self) -> int:
        return sum(
            1 for p, at in self.landed if not is_priority(p.customer) and at == DEDICATED_PARTITION
        )

    @property
    def off_murmur2(self) -> int:
        """Keyed records not where the Java client's murmur2 (`partition_for`) puts them."""
        return sum(
            1 for p, at in self.landed if at != partition_for(p.customer.encode(), PARTITIONS)
        )


async def run_all(
    settings: KafkaSettings, workspace: LabWorkspace, records: int, customers: int, members: int
) -> list[PartitioningOutcome]:
    stream = order_stream(records, customer_ids(customers))
    return [await run_one(settings, workspace, s, stream, members) for s in STRATEGIES]


async def run_one(
    settings: KafkaSettings,
    workspace: LabWorkspace,
    strategy: Strategy,
    stream: list[Placed],
    members: int,
) -> PartitioningOutcome:
    topic = await workspace.create_topic(strategy.name, PARTITIONS)
    group_id = workspace.group(strategy.name)
    async with consumer_group(settings, topic, group_id, members) as group:
        await group.wait_settled(PARTITIONS, SETTLE_S)
        # The members consume while the records are produced, as a live pipeline would.
        consuming = asyncio.create_task(
            group.consume(len(stream), PROCESSING_DELAY_S, produce_s(stream) + consume_s(stream))
        )
        try:
            partitions = await produce(settings, topic, strategy, stream)
        except BaseException:
            consuming.cancel()
            await asyncio.wait([consuming])  # ended before its consumers are stopped
            raise
        await consuming
        held = [sorted(member) for member in group.held]
    landed = list(zip(stream, partitions, strict=True))
    return PartitioningOutcome(strategy, landed, ordering(group.arrivals), held)


async def produce(
    settings: KafkaSettings, topic: str, strategy: Strategy, stream: list[Placed]
) -> list[int]:
    """Send the stream in order through the strategy's partitioner; the partition of each."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-lab",
        partitioner=strategy.partitioner(),
        # Idempotent: a retried batch cannot land twice or behind a later one, so whatever
        # disorder the consumers see comes from partitioning, not from production.
        enable_idempotence=True,
        request_timeout_ms=settings.request_timeout_ms,
        **kafka_client_security(settings),
    )
    await bounded(settings, "starting the lab producer", producer.start())
    try:
        # An idempotent producer's batch never expires: the whole production is bounded.
        async with within(settings, f"producing {len(stream)} records", produce_s(stream)):
            sent = []
            for placed in stream:
                key = placed.customer.encode() if strategy.keyed else None
                sent.append(await producer.send(topic, placed.encode(), key=key))
            acknowledged = await asyncio.gather(*sent)
        return [metadata.partition for metadata in acknowledged]
    finally:
        # Closing must not hide the run's result, nor wait for a broker that is gone.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), settings.request_timeout_ms / 1000)


def produce_s(stream: list[Placed]) -> float:
    return 15.0 + len(stream) / 1000


def consume_s(stream: list[Placed]) -> float:
    # Three members share the work; twice the work of one alone leaves room for a slow machine.
    return 15.0 + 2 * len(stream) * PROCESSING_DELAY_S

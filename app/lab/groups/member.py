"""One member of a lab consumer group, recording what the group does to it.

It subscribes (the group's coordinator assigns its partitions), reads, and notes the time of
every revocation, every assignment and every fetch that brought records. On a revocation it
commits the positions it reached, so the next owner of a partition starts where it stopped:
without that, a partition handed over would be read again from the reset point.

Run as a child process (`python -m app.lab.groups.member --topic T --group G [--instance-id I]`)
it prints `assigned partitions=0,2,4` at each assignment and stops its consumer on SIGTERM, so
the parent can restart it gracefully, or kill it -9 as a crash would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.structs import TopicPartition

from app.kafka_security import kafka_client_security
from app.operations.kafka_clients import bounded
from app.settings import KafkaSettings, load_settings


@dataclass(frozen=True)
class Event:
    at: float  # time.monotonic()
    partitions: frozenset[int]


@dataclass
class MemberLog:
    """What one member saw: its rebalances, and what it read when."""

    name: str
    revoked: list[Event] = field(default_factory=list)
    assigned: list[Event] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # each fetch that brought records
    read: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset)

    def records_by_partition(self) -> Counter[int]:
        return Counter(partition for partition, _ in self.read)


def _partitions(tps: Iterable[TopicPartition]) -> frozenset[int]:
    return frozenset(tp.partition for tp in tps)


class _Recorder(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, member: LabMember) -> None:
        self.member = member

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # aiokafka's assignors are all EAGER: every member gives up all its partitions at each
        # rebalance, and reads nothing until the group has agreed on the next assignment.
        self.member.log.revoked.append(Event(time.monotonic(), _partitions(revoked)))
        if revoked:
            # The read loop counts records as soon as getmany returns them (no await between),
            # so the consumed position is also the processed one: commit() may commit it.
            await self.member.consumer.commit()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        event = Event(time.monotonic(), _partitions(assigned))
        self.member.log.assigned.append(event)
        self.member.on_assigned(event)


class LabMember:
    """A subscribed consumer of `topic` in `group`, logging into `self.log`."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        group: str,
        name: str,
        *,
        assignor: type[AbstractPartitionAssignor] = RoundRobinPartitionAssignor,
        instance_id: str | None = None,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 1_000,
        from_beginning: bool = True,
        on_assigned: Callable[[Event], None] = lambda event: None,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.log = MemberLog(name)
        self.on_assigned = on_assigned
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-lab-{name}",
            group_id=group,
            group_instance_id=instance_id,
            partition_assignment_strategy=(assignor,),
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            request_timeout_ms=kafka.request_timeout_ms,
            **kafka_client_security(kafka),
        )
        self._reading: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.log.name

    @property
    def partitions(self) -> frozenset[int]:
        """The partitions assigned now (empty while a rebalance is in progress)."""
        return _partitions(self.consumer.assignment())

    def failed(self) -> BaseException | None:
        """The error that ended this member's reading, if it ended."""
        if self._reading is not None and self._reading.done() and not self._reading.cancelled():
            return self._reading.exception()
        return None

    async def start(self) -> None:
        await bounded(self.kafka, f"starting {self.log.name}", self.consumer.start())
        self.consumer.subscribe([self.topic], listener=_Recorder(self))
        self._reading = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=100)
            if any(batches.values()):
                self.log.arrivals.append(time.monotonic())
            for tp, records in batches.items():
                self.log.read.extend((tp.partition, record.offset) for record in records)

    async def stop(self) -> None:
        """Stop reading and close; a dynamic member leaves the group, a static one does not."""
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reading
        # Closing must not hide the run's result, nor wait for a broker that is gone.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.consumer.stop(), self.kafka.request_timeout_ms / 1000)


async def _run_child(args: argparse.Namespace) -> None:
    def report(event: Event) -> None:
        print(f"assigned partitions={','.join(map(str, sorted(event.partitions)))}", flush=True)

    member = LabMember(
        load_settings().kafka,
        args.topic,
        args.group,
        args.name,
        instance_id=args.instance_id or None,
        session_timeout_ms=args.session_timeout_ms,
        heartbeat_interval_ms=args.heartbeat_interval_ms,
        from_beginning=False,
        on_assigned=report,
    )
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await member.start()
    await stopping.wait()
    await member.stop()
    print("stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="one lab group member, as a child process")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--name", default="member")
    parser.add_argument("--instance-id", default="", help="group.instance.id: a static member")
    parser.add_argument("--session-timeout-ms", type=int, default=10_000)
    parser.add_argument("--heartbeat-interval-ms", type=int, default=1_000)
    asyncio.run(_run_child(parser.parse_args()))


if __name__ == "__main__":
    main()

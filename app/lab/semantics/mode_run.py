"""One mode through one phase of the experiment: its topics, its group, its member slot, and
what its reader received once the member caught up with the stream."""

from __future__ import annotations

import asyncio
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from app.lab.semantics import store
from app.lab.semantics.downstream import CommittedReader
from app.lab.semantics.members import LONGEST_FREEZE_S, Slot
from app.lab.semantics.modes import Mode
from app.lab.semantics.tally import Received
from app.lab.workspace import LabWorkspace
from app.operations.kafka_clients import bounded, offsets_consumer
from app.process_env import settings_env
from app.settings import Settings


@dataclass
class Lab:
    """Where the experiment runs: the settings (pointed at the broker it uses), the topics and
    groups of the run, the database, and what it is doing now (for a deadline's message)."""

    settings: Settings
    workspace: LabWorkspace
    engine: AsyncEngine
    partitions: int
    max_records: int
    step: str = "starting"
    run_ids: list[str] = field(default_factory=list)


def _member_env(settings: Settings) -> dict[str, str]:
    # A zombie is frozen mid-batch with its PostgreSQL transaction open (exactly-once-postgres):
    # PostgreSQL's idle_in_transaction_session_timeout (30 s by default) would end its session
    # before it is woken, and it would exit on that error instead of finding itself fenced.
    # Its members' sessions outlast the longest freeze.
    timeout_s = max(settings.database.idle_in_transaction_timeout_s, LONGEST_FREEZE_S + 60)
    return settings_env(settings, DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_S=f"{timeout_s:g}")


class ModeRun:
    def __init__(self, lab: Lab, mode: Mode, phase: str) -> None:
        self.lab = lab
        self.mode = mode
        self.name = f"semantics-{mode.name}-{phase}"
        self.run_id = f"{lab.workspace.run_id}/{phase}"
        if self.run_id not in lab.run_ids:
            lab.run_ids.append(self.run_id)
        self.group = lab.workspace.group(self.name)
        self.topic = self.out_topic = ""
        self.reader: CommittedReader | None = None
        self.slot = Slot(mode.name, self._argv, _member_env(lab.settings))

    async def prepare(self, stack: AsyncExitStack) -> None:
        """Its topics (and, the Kafka way, its downstream reader); its members are ended with
        `stack`."""
        workspace, partitions = self.lab.workspace, self.lab.partitions
        self.topic = await workspace.create_topic(f"{self.name}-in", partitions)
        if self.mode.results == "kafka":
            self.out_topic = await workspace.create_topic(f"{self.name}-out", partitions)
            reader = CommittedReader(self.lab.settings.kafka, self.out_topic, partitions)
            self.reader = await stack.enter_async_context(reader)
        stack.push_async_callback(self.slot.end_everyone)

    def _argv(self, instance: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "app.lab.semantics.member",
            f"--mode={self.mode.name}",
            f"--topic={self.topic}",
            f"--partitions={self.lab.partitions}",
            f"--group={self.group}",
            f"--run-id={self.run_id}",
            f"--instance={instance}",
            f"--max-records={self.lab.max_records}",
            f"--out-topic={self.out_topic}",
            # One stage slot per mode: every incarnation of it shares this id, so that each
            # one fences the one before.
            f"--transactional-id={self.group}.stage-0",
        ]

    @property
    def _partitions(self) -> list[TopicPartition]:
        return [TopicPartition(self.topic, p) for p in range(self.lab.partitions)]

    async def finish(
        self, faults: asyncio.Task[Any] | None = None, stop_faults: asyncio.Event | None = None
    ) -> list[Received]:
        """Wait until the member's position reaches the end of the input (the `faults` task
        goes on until then, and `stop_faults` ends it), stop the member (it finishes the batch
        in hand), and return what the mode's reader received, in arrival order."""
        kafka = self.lab.settings.kafka
        async with offsets_consumer(kafka, self.group) as consumer:
            ends = await bounded(
                kafka, "reading end offsets", consumer.end_offsets(self._partitions)
            )
            while True:
                if faults is not None and faults.done():
                    faults.result()  # they failed (a member that would not start): say why
                await self.slot.keep_running()
                if await self._reached(consumer, ends):
                    if faults is None or faults.done():
                        break
                    assert stop_faults is not None
                    stop_faults.set()
                    await faults  # it may kill once more, mid-batch: look again
                    continue
                await asyncio.sleep(0.3)
        await self.slot.stop()
        if self.reader is not None:
            await self.reader.caught_up(60)
            return list(self.reader.received)
        return await store.deliveries(self.lab.engine, self.run_id, self.mode.name)

    async def _reached(self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
        """Whether the member's stored position is at the end of every partition."""
        if self.mode.positions == "postgres":
            stored = await store.read_positions(self.lab.engine, self.run_id, self.mode.name)
        else:
            kafka = self.lab.settings.kafka
            stored = {
                tp.partition: await bounded(kafka, "reading offsets", consumer.committed(tp)) or 0
                for tp in self._partitions
            }
        return all(stored.get(tp.partition, 0) >= end for tp, end in ends.items())

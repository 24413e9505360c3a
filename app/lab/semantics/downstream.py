"""Readers in the lab process: the Kafka way's downstream reader, and a census of a topic.

The downstream reader reads the stage's output as any consumer of it would, `read_committed`:
what it receives, in arrival order, is what the tally counts for the Kafka way, and the instant
it received a record is when that record became visible. The census reads a mode's INPUT topic
once the run is over, to tell the faults apart: an acknowledged event missing from the log was
lost by the producer, one twice in the log was appended twice by a retried request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from types import TracebackType
from typing import Self

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from app.closing import close_quietly
from app.lab.clients import lab_client_options
from app.lab.semantics.stream import decode
from app.lab.semantics.tally import Received
from app.operations.kafka_clients import bounded
from app.settings import KafkaSettings

POLL_MS = 200


class _TopicReader:
    """Reads every partition of a topic from its beginning, in a task of its own."""

    def __init__(
        self, kafka: KafkaSettings, topic: str, partitions: int, isolation_level: str
    ) -> None:
        self._kafka = kafka
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self._consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level=isolation_level,
            **lab_client_options(kafka, "reader"),
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await bounded(self._kafka, "starting a lab reader", self._consumer.start())
        self._consumer.assign(self._partitions)
        await bounded(self._kafka, "seeking", self._consumer.seek_to_beginning(*self._partitions))
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await close_quietly(self._consumer.stop(), 10)

    async def _read(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=POLL_MS)
            seen_at = time.time()
            for records in batch.values():
                for record in records:
                    self.take(record.value or b"", dict(record.headers), seen_at)

    def take(self, value: bytes, headers: dict[str, bytes], seen_at: float) -> None:
        raise NotImplementedError

    async def caught_up(self, within_s: float) -> None:
        """Wait until the reader has read to the end of every partition (read_committed: to
        the last stable offset, past which a transaction may still be open)."""
        ends = await bounded(
            self._kafka, "reading end offsets", self._consumer.end_offsets(self._partitions)
        )
        async with asyncio.timeout(within_s):
            for tp in self._partitions:
                while await self._consumer.position(tp) < ends[tp]:
                    if self._task is not None and self._task.done():
                        self._task.result()  # the reader failed: say why
                    await asyncio.sleep(0.05)


class CommittedReader(_TopicReader):
    """The downstream reader of the Kafka way's output."""

    def __init__(self, kafka: KafkaSettings, topic: str, partitions: int) -> None:
        super().__init__(kafka, topic, partitions, "read_committed")
        self.received: list[Received] = []

    def take(self, value: bytes, headers: dict[str, bytes], seen_at: float) -> None:
        sent = decode(value)
        event = sent.event
        writer = headers.get("writer", b"").decode()
        self.received.append(
            Received(event.id, event.key, event.seq, sent.sent_at, seen_at, writer)
        )


class Census(_TopicReader):
    """How many copies of each event a topic's log holds."""

    def __init__(self, kafka: KafkaSettings, topic: str, partitions: int) -> None:
        super().__init__(kafka, topic, partitions, "read_uncommitted")
        self.copies: Counter[int] = Counter()

    def take(self, value: bytes, headers: dict[str, bytes], seen_at: float) -> None:
        self.copies[decode(value).event.id] += 1


async def census(kafka: KafkaSettings, topic: str, partitions: int) -> Counter[int]:
    """Every event id in the topic's log, with its number of copies."""
    async with Census(kafka, topic, partitions) as reader:
        await reader.caught_up(60)
        return reader.copies

"""What a mode's consumer loop works with, inside its member process: its clients, its
database, its crash point, and the lines it tells the lab.

The member speaks on stdout, one JSON object a line: `ready` once it consumes, `mid-batch` when
it stands at its crash point, `committed` after each batch, `fenced` when a newer member refused
its write, `error`. Signals: SIGUSR1 arms the crash point, SIGUSR2 disarms it, SIGTERM asks it
to finish the batch in hand and stop.

The crash point: once armed, halfway through its next batch the member says `mid-batch` and
waits there (at most HALT_S) for the lab's kill -9, or its SIGSTOP. So the fault lands in the
middle of a batch every time, the instant each mode is about (as app/worker/faults.py stops a
worker at a named step); the lab chooses when, the process really dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from app.closing import close_quietly
from app.db.engine import create_engine
from app.lab.clients import lab_client_options
from app.lab.semantics.store import Delivery
from app.lab.semantics.stream import decode
from app.settings import Settings

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
Client = TypeVar("Client", AIOKafkaConsumer, AIOKafkaProducer, AIOKafkaAdminClient)

FENCED_EXIT = 3
ERROR_EXIT = 2
# How long a member waits at its crash point for the lab's signal before it carries on.
HALT_S = 5.0
POLL_MS = 200
# A member (re)started while the broker restarts waits this long for it to answer.
CONNECT_FOR_S = 60.0


class Fenced(Exception):
    """A newer member of this slot moved on: this member's write was refused, it leaves."""


@dataclass(frozen=True)
class MemberArgs:
    mode: str
    topic: str
    partitions: int
    group: str
    run_id: str
    instance: str  # which incarnation of the slot this process is (m1, m2, ...)
    max_records: int
    out_topic: str = ""
    transactional_id: str = ""


class Member:
    def __init__(self, settings: Settings, args: MemberArgs, stack: AsyncExitStack) -> None:
        self.settings = settings
        self.args = args
        self._stack = stack
        self._stop_asked = False
        self._armed = False
        self._parent = os.getppid()
        self._engine: AsyncEngine | None = None

    # --- what the lab asks (signal handlers) ---

    def stop(self) -> None:
        self._stop_asked = True

    def arm(self) -> None:
        self._armed = True

    def disarm(self) -> None:
        self._armed = False

    @property
    def stopping(self) -> bool:
        # A lab that died leaves its members to the init process: they leave too.
        return self._stop_asked or os.getppid() != self._parent

    # --- what the member tells the lab ---

    def say(self, event: str, **fields: object) -> None:
        print(json.dumps({"event": event, **fields}), flush=True)

    async def processed(self, done: int, total: int, **where: object) -> None:
        """Call after each record of a batch: halfway through the batch is the crash point
        (a batch of two records at least, so that some are done and some are not)."""
        if self._armed and total >= 2 and done == total // 2:
            self._armed = False
            self.say("mid-batch", done=done, total=total, **where)
            await asyncio.sleep(HALT_S)  # the lab's kill -9 (or SIGSTOP) lands here

    # --- what a record becomes ---

    def writer(self, batch: int) -> str:
        """Which incarnation wrote a row or record, in which of its batches."""
        return f"{self.args.instance}:{batch}"

    def delivery(self, record: Record, batch: int) -> Delivery:
        assert record.value is not None
        sent = decode(record.value)
        return Delivery(
            self.args.run_id,
            self.args.mode,
            sent.event.id,
            sent.event.key,
            sent.event.seq,
            sent.sent_at,
            self.writer(batch),
        )

    # --- its clients ---

    @property
    def partitions(self) -> list[TopicPartition]:
        return [TopicPartition(self.args.topic, p) for p in range(self.args.partitions)]

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = create_engine(self.settings.database)
            self._stack.push_async_callback(close_quietly, self._engine.dispose())
        return self._engine

    async def input_consumer(
        self, isolation_level: str = "read_uncommitted", positions: dict[int, int] | None = None
    ) -> AIOKafkaConsumer:
        """The mode's consumer, started, assigned every partition of the input topic, each at
        `positions` (default: the group's committed offsets).

        Assigned by hand rather than subscribed: a member started after a kill -9 reads at
        once, instead of waiting out the dead member's session timeout for a rebalance. Its
        offsets still go to (and come from) the mode's consumer group.
        """
        start_at = positions if positions is not None else await self._committed()
        kafka = self.settings.kafka

        def consumer() -> AIOKafkaConsumer:
            return AIOKafkaConsumer(
                group_id=self.args.group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level=isolation_level,
                **lab_client_options(kafka, self.args.instance),
            )

        started = await self._started(consumer, lambda c: c.start(), lambda c: c.stop())
        started.assign(self.partitions)
        for tp in self.partitions:  # before any await: the consumer never looks them up itself
            started.seek(tp, start_at[tp.partition])
        return started

    async def _committed(self) -> dict[int, int]:
        """The group's committed offset of each partition (0 where nothing was committed: the
        lab's topics begin at 0).

        Read here rather than by the consumer. aiokafka asks with OffsetFetch v2+ and does not
        read the answer's group-level error: while the group's coordinator moves (a broker
        restarting) the answer holds no partition, which aiokafka takes for "nothing
        committed", and the consumer starts over from auto_offset_reset. The lab saw an
        at-most-once consumer store a thousand events twice that way. An answer that leaves
        out a partition asked about is that error: asked again.
        """
        kafka = self.settings.kafka

        def admin() -> AIOKafkaAdminClient:
            return AIOKafkaAdminClient(**lab_client_options(kafka, self.args.instance))

        async with AsyncExitStack() as stack:
            client = await self._started(admin, lambda a: a.start(), lambda a: a.close(), stack)
            loop = asyncio.get_running_loop()
            give_up = loop.time() + CONNECT_FOR_S
            while True:
                try:
                    answer = await asyncio.wait_for(
                        client.list_consumer_group_offsets(
                            self.args.group, partitions=self.partitions
                        ),
                        kafka.request_timeout_ms / 1000,
                    )
                except (KafkaError, OSError, TimeoutError):
                    answer = {}
                if set(answer) == set(self.partitions):
                    return {tp.partition: max(0, meta.offset) for tp, meta in answer.items()}
                if loop.time() > give_up:
                    msg = f"no answer with the committed offsets of group {self.args.group}"
                    raise KafkaError(msg)
                await asyncio.sleep(0.5)

    async def transactional_producer(self) -> AIOKafkaProducer:
        """A transactional producer, started: starting it fences every earlier producer of the
        same transactional id and completes (aborts) the transaction one of them left open."""
        kafka = self.settings.kafka

        def producer() -> AIOKafkaProducer:
            return AIOKafkaProducer(
                transactional_id=self.args.transactional_id,
                enable_idempotence=True,
                acks="all",
                **lab_client_options(kafka, self.args.instance),
            )

        return await self._started(producer, lambda p: p.start(), lambda p: p.stop())

    async def mirror_commit(self, consumer: AIOKafkaConsumer, offsets: dict[Any, int]) -> None:
        """Commit to Kafka only as a mirror of positions kept elsewhere: bounded, and a failure
        changes nothing (aiokafka retries a commit for as long as the broker is away)."""
        with contextlib.suppress(TimeoutError, KafkaError):
            await asyncio.wait_for(consumer.commit(offsets), 2.0)

    async def _started(
        self,
        make: Callable[[], Client],
        start: Callable[[Client], Awaitable[None]],
        stop: Callable[[Client], Awaitable[None]],
        stack: AsyncExitStack | None = None,
    ) -> Client:
        """A client, started: retried with a new one while the broker does not answer (it may
        be restarting), up to CONNECT_FOR_S; closed, bounded, when the member leaves."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + CONNECT_FOR_S
        timeout = self.settings.kafka.request_timeout_ms / 1000
        while True:
            client = make()
            try:
                await asyncio.wait_for(start(client), timeout)
            except (KafkaError, OSError, TimeoutError):
                await close_quietly(stop(client))
                if loop.time() > give_up or self.stopping:
                    raise
                await asyncio.sleep(0.5)
                continue
            (stack or self._stack).push_async_callback(close_quietly, stop(client))
            return client

"""The stream's source: one producer per mode, configured as the mode says, sending the events
keyed by customer, paced, and keeping count of what the broker acknowledged.

Nothing is sent again by the lab: a send the client gave up on (an expired batch, while the
broker was away) is reported to the application, so it is sent but not acknowledged, and the
tally does not count it as lost. With acks=0 there is no acknowledgement at all: every send
counts as acknowledged, because that is all a fire-and-forget producer ever knows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from functools import partial
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from app.closing import close_quietly
from app.errors import OrdersError
from app.lab.clients import lab_client_options
from app.lab.semantics.lost_acks import LostAcks
from app.lab.semantics.stream import Event, encode
from app.settings import KafkaSettings

# aiokafka gives a batch that is not idempotent up after request_timeout_ms (the Java client's
# delivery.timeout.ms defaults to 2 minutes). The pipeline's 10 s suits an API that answers
# within seconds; a source that must outlast the lab's broker restart (5-10 s) gets this.
DELIVERY_TIMEOUT_MS = 30_000


class Source:
    def __init__(
        self,
        kafka: KafkaSettings,
        options: dict[str, object],
        lost_acks_every: int | None = None,
    ) -> None:
        self._kafka = kafka
        self._options = options
        self._fire_and_forget = options["acks"] == 0
        self._lost_acks_every = lost_acks_every
        self._faults: list[LostAcks] = []
        self._producer = self._new_producer()
        self.sent = 0
        self.acknowledged: set[int] = set()
        self.failed = 0  # sends the client reported failed (with acks=0 too: nobody looks)
        self.deaths: list[str] = []  # why each producer that died (and was replaced) died
        self.first_send: float | None = None  # the wall clock, as the events' sent_at

    def _new_producer(self) -> AIOKafkaProducer:
        kafka = self._kafka
        producer = AIOKafkaProducer(
            **lab_client_options(
                kafka,
                "source",
                request_timeout_ms=max(kafka.request_timeout_ms, DELIVERY_TIMEOUT_MS),
            ),
            linger_ms=kafka.linger_ms,
            max_batch_size=kafka.max_batch_size,
            compression_type=None if kafka.compression_type == "none" else kafka.compression_type,
            **self._options,
        )
        if self._lost_acks_every:
            self._faults.append(LostAcks(producer, self._lost_acks_every))
        return producer

    @property
    def lost_acks(self) -> int:
        """Answers the fault injection lost (each one a request the client sent again)."""
        return sum(fault.injected for fault in self._faults)

    async def __aenter__(self) -> Source:
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._close()

    async def send(self, topic: str, events: Sequence[Event], rate: float | None) -> None:
        """Send `events` in order, `rate` per second (None: as fast as the client takes them)."""
        loop = asyncio.get_running_loop()
        begin = loop.time()
        for index, event in enumerate(events):
            if rate:
                ahead = begin + index / rate - loop.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            sent_at = time.time()
            if self.first_send is None:
                self.first_send = sent_at
            self.sent += 1
            try:
                answer = await self._producer.send(
                    topic, encode(event, sent_at), key=event.key.encode()
                )
            except KafkaError:
                self.failed += 1  # refused at once: even fire-and-forget code sees that
                if self._dead():
                    await self._replace()
                continue
            if self._fire_and_forget:
                self.acknowledged.add(event.id)
            answer.add_done_callback(partial(self._on_answer, event.id))

    async def flush(self, within_s: float) -> None:
        """Wait until every send has its answer (an idempotent producer never gives up a batch:
        the wait is bounded here)."""
        try:
            await asyncio.wait_for(self._producer.flush(), within_s)
        except TimeoutError:
            msg = (
                f"Kafka at {self._kafka.bootstrap_servers} did not acknowledge the lab's "
                f"records within {within_s:g}s"
            )
            raise OrdersError(msg) from None

    def _on_answer(self, event_id: int, answer: asyncio.Future[Any]) -> None:
        if answer.cancelled() or answer.exception() is not None:
            self.failed += 1
        elif not self._fire_and_forget:
            self.acknowledged.add(event_id)

    def _dead(self) -> bool:
        # aiokafka 0.14's sender task ends on an error it does not expect, and every send after
        # fails. With acks=0, a broker that resets the connection in the middle of a write does
        # it: the write's ConnectionResetError escapes the sender, which catches KafkaError.
        return bool(self._producer._sender.sender_task.done())

    async def _replace(self) -> None:
        """A new producer for a dead one, as an application would after its sends all fail."""
        ended = self._producer._sender.sender_task
        error = None if ended.cancelled() else ended.exception()
        self.deaths.append(repr(error.__cause__ or error) if error else "its sender stopped")
        await self._close()
        self._producer = self._new_producer()
        await self._start()

    async def _start(self) -> None:
        timeout = self._kafka.request_timeout_ms / 1000
        loop = asyncio.get_running_loop()
        give_up = loop.time() + DELIVERY_TIMEOUT_MS / 1000
        while True:  # the broker may be restarting
            try:
                await asyncio.wait_for(self._producer.start(), timeout)
            except (KafkaError, OSError, TimeoutError) as exc:
                await self._close()
                if loop.time() < give_up:
                    self._producer = self._new_producer()
                    await asyncio.sleep(0.5)
                    continue
                where = self._kafka.bootstrap_servers
                msg = f"the lab's producer cannot reach Kafka at {where}: {exc!r}"
                raise OrdersError(msg) from exc
            return

    async def _close(self) -> None:
        await close_quietly(self._producer.stop(), 10)

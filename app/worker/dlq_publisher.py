"""Poison records go to the dead-letter topic, with headers that say where they came from."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from app.dlq_headers import (
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_FAILED_AT,
    H_OFFSET,
    H_PARTITION,
    H_TIMESTAMP,
    H_TIMESTAMP_TYPE,
    H_TOPIC,
    H_WORKER,
)
from app.publisher import build_producer, close_producer
from app.settings import KafkaSettings


def dead_letter_headers(
    record: ConsumerRecord[bytes, bytes], error: Exception, worker: str
) -> list[tuple[str, bytes]]:
    """The original record's headers, plus where it came from and why it was refused."""
    provenance = [
        (H_TOPIC, record.topic.encode()),
        (H_PARTITION, str(record.partition).encode()),
        (H_OFFSET, str(record.offset).encode()),
        (H_TIMESTAMP, str(record.timestamp).encode()),
        (H_TIMESTAMP_TYPE, str(record.timestamp_type).encode()),
        (H_ERROR_CLASS, type(error).__name__.encode()),
        (H_ERROR_MESSAGE, str(error)[:1000].encode()),
        (H_WORKER, worker.encode()),
        (H_FAILED_AT, datetime.now(UTC).isoformat().encode()),
    ]
    return [*list(record.headers or ()), *provenance]


class DeadLetterPublisher:
    def __init__(self, settings: KafkaSettings, worker: str, timeout_s: float) -> None:
        self._settings = settings
        self._worker = worker
        self._timeout = timeout_s
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        producer = build_producer(self._settings)
        try:
            await asyncio.wait_for(producer.start(), self._timeout)
        except (TimeoutError, KafkaError):
            await close_producer(producer, self._timeout)
            raise
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await close_producer(self._producer, self._timeout)
            self._producer = None

    async def publish(self, poison: list[tuple[ConsumerRecord[bytes, bytes], Exception]]) -> None:
        """Send every poison record and wait for acks=all; raises if that takes too long.

        After any failure the producer is rebuilt before the next try: a fatal sequence error
        or a dead sender task would otherwise fail every later batch holding poison.
        """
        if self._producer is None:
            await self.start()
        assert self._producer is not None
        try:
            async with asyncio.timeout(self._timeout):
                deliveries = [
                    await self._producer.send(
                        self._settings.dlq_topic,
                        value=record.value,
                        key=record.key,
                        headers=dead_letter_headers(record, error, self._worker),
                    )
                    for record, error in poison
                ]
                await asyncio.gather(*deliveries)
        except (TimeoutError, KafkaError):
            await self.stop()
            raise

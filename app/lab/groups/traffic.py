"""The records the groups and offsets labs read: a topic filled up front, or a steady stream.

Records go to explicit partitions in turn (record i to partition i % n): aiokafka sends a keyless
record to a random partition, and these labs measure groups, not partitioners.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from app.kafka_security import kafka_client_security
from app.lab.deadline import within
from app.operations.kafka_clients import bounded
from app.settings import KafkaSettings


@asynccontextmanager
async def lab_producer(kafka: KafkaSettings) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-lab",
        acks="all",
        linger_ms=5,
        request_timeout_ms=kafka.request_timeout_ms,
        **kafka_client_security(kafka),
    )
    await bounded(kafka, "starting the lab producer", producer.start())
    try:
        yield producer
    finally:
        # Closing must not hide the run's result, nor wait for a broker that is gone.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), kafka.request_timeout_ms / 1000)


async def fill(kafka: KafkaSettings, topic: str, records: int, partitions: int) -> None:
    """Write `records` records (values "0", "1", ...) spread evenly over the partitions."""
    async with (
        lab_producer(kafka) as producer,
        within(kafka, f"writing {records} records to {topic}", 30 + records / 500),
    ):
        sent = [
            await producer.send(topic, str(i).encode(), partition=i % partitions)
            for i in range(records)
        ]
        await asyncio.gather(*sent)


@dataclass
class Stream:
    sent: int = 0


@asynccontextmanager
async def steady_stream(
    kafka: KafkaSettings, topic: str, partitions: int, per_second: float
) -> AsyncIterator[Stream]:
    """Produce about `per_second` records a second into `topic` for as long as the block runs."""
    stream = Stream()

    async def produce(producer: AIOKafkaProducer) -> None:
        started = time.monotonic()
        while True:
            # Catch up to the schedule in small bursts, so a slow moment does not lower the rate.
            due = int((time.monotonic() - started) * per_second)
            while stream.sent < due:
                await producer.send(topic, b"tick", partition=stream.sent % partitions)
                stream.sent += 1
            await asyncio.sleep(0.01)

    async with lab_producer(kafka) as producer:
        task = asyncio.create_task(produce(producer))
        try:
            yield stream
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # and a producer that failed on the way raises here

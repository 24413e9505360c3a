#!/usr/bin/env python3
"""Where the API's Kafka time goes: client CPU per produce request, per batch, per record.

Sends records through app.batching.PartitionBatches (the API's own path) to the broker in the
environment (KAFKA_BOOTSTRAP_SERVERS), one produce request at a time, with 1, 4 or 16 records
in each partition's batch and 1 or 6 partitions in each request. Prints the client's CPU per
request and per record; the differences between rows give the fixed cost of a request, the
cost of one more batch in it, and the cost of one more record.

    .venv/bin/python scripts/bench/producer_costs.py
"""

from __future__ import annotations

import asyncio
import time
import uuid

import uvloop
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.batching import PartitionBatches
from app.publisher import build_producer, close_producer
from app.settings import get_settings

RECORDS = 3_000  # per row
VALUE = b"x" * 330  # about an order envelope
HEADERS = [("content-type", b"application/json"), ("request-id", b"0" * 36)]


async def produce_rounds(
    batches: PartitionBatches, requests: int, per_batch: int, partitions: int
) -> float:
    """CPU seconds for `requests` produce requests of `per_batch` records in each of
    `partitions` partitions' batches."""
    started = time.process_time()
    for _ in range(requests):
        # Appended without yielding, so each partition's records share one batch and all of
        # them one produce request; the next round waits for the acks.
        await asyncio.gather(
            *(
                batches.append(partition, b"key", VALUE, HEADERS)
                for partition in range(partitions)
                for _ in range(per_batch)
            )
        )
    return time.process_time() - started


async def main() -> None:
    settings = get_settings().kafka
    topic = f"bench-producer-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 6, 1)])
    finally:
        await admin.close()
    producer = build_producer(settings)
    await producer.start()
    batches = PartitionBatches(producer, topic)
    # A new topic's leaders settle first; this warm-up takes the retries that may cause.
    await asyncio.gather(*(batches.append(p, b"key", VALUE, HEADERS) for p in range(6)))
    print(f"compression {settings.compression_type}, {len(VALUE)}-byte values, topic {topic}")
    try:
        for per_batch in (1, 4, 16):
            for partitions in (1, 6):
                requests = RECORDS // per_batch
                cpu = await produce_rounds(batches, requests, per_batch, partitions)
                print(
                    f"{per_batch:2} records/batch x {partitions} partitions: "
                    f"{cpu / requests * 1e6:6.0f} us/request  "
                    f"{cpu / (requests * per_batch * partitions) * 1e6:5.1f} us/record"
                )
    finally:
        await batches.close()
        await close_producer(producer, 5.0)


if __name__ == "__main__":
    uvloop.run(main())

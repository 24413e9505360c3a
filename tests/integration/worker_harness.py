"""Run an OrderWorker inside the test process, for scenarios that need no separate process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka.admin import AIOKafkaAdminClient
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.ext.asyncio import AsyncEngine

from app.settings import Settings
from app.worker import OrderWorker


@asynccontextmanager
async def worker_running(
    settings: Settings, engine: AsyncEngine, tracer_provider: TracerProvider | None = None
) -> AsyncIterator[OrderWorker]:
    worker = OrderWorker(settings, engine, tracer_provider=tracer_provider)
    await worker.start()
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)
        await worker.close()


async def committed_offsets(settings: Settings) -> dict[int, int]:
    """The consumer group's committed offsets in Kafka (what kafka-consumer-groups shows)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.worker.group_id)
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset
        for tp, meta in offsets.items()
        if tp.topic == settings.kafka.orders_topic
    }

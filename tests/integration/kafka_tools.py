"""Read what is really on a topic, and run a throwaway broker a test may stop and restart."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

ROOT = Path(__file__).resolve().parents[2]


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [
                TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []
            ]
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


async def read_topic(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record on the topic now, in partition then offset order."""
    ends = await end_offsets(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        partitions = [TopicPartition(topic, p) for p in ends]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        remaining = {tp for tp in partitions if ends[tp.partition] > 0}
        async with asyncio.timeout(60):
            while remaining:
                batch = await consumer.getmany(timeout_ms=1000)
                for tp, batch_records in batch.items():
                    records.extend(batch_records)
                    if batch_records[-1].offset + 1 >= ends[tp.partition]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()
    return sorted(records, key=lambda r: (r.partition, r.offset))


def _services_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("services", ROOT / "scripts" / "services.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["services"] = module
    spec.loader.exec_module(module)
    return module


class ThrowawayBroker:
    """A real single-node Kafka (same jars as `make up`) on its own ports, for fault tests."""

    def __init__(self, home: Path, base_port: int) -> None:
        self.services = _services_module()
        self.home = home
        self.base_port = base_port
        self.bootstrap = f"127.0.0.1:{base_port}"

    def start(self) -> None:
        self.services.kafka_up(1, self.base_port, self.home)

    def stop(self, *, kill: bool = False) -> None:
        pid_file = self.services.kafka_node_home(self.home, 1) / "broker.pid"
        if kill:
            pid = self.services.pid_alive(pid_file)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                while self.services.pid_alive(pid_file):
                    time.sleep(0.05)
            pid_file.unlink(missing_ok=True)
        else:
            self.services.stop_pid(pid_file, "throwaway broker")


@contextmanager
def throwaway_broker(home: Path, base_port: int = 19192) -> Iterator[ThrowawayBroker]:
    broker = ThrowawayBroker(home, base_port)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop(kill=True)

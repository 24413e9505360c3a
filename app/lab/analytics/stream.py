"""The lab's orders: real contract records (app.contract.encode), keyed by customer, sent paced
to a LogAppendTime topic, with the totals of what the broker acknowledged kept as the truth.

Each order is a valid v1 envelope with an acceptance deadline well ahead (appended in time, so
every acknowledged order is one that analytics must count), in EUR or USD.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from aiokafka import AIOKafkaProducer

from app import contract
from app.closing import close_quietly
from app.kafka_security import kafka_client_security
from app.lab.workspace import LabWorkspace
from app.operations.kafka_clients import admin_client, bounded
from app.settings import KafkaSettings
from app.topics import enforce_topic_configs, topic_configs

CURRENCIES = ("EUR", "USD")
CUSTOMERS = 200
ACCEPT_FOR_S = 120.0  # every order's deadline: far ahead, so that each one is an order
TICK_S = 0.05
FLUSH_S = 30.0


def lab_order(n: int, now: datetime) -> contract.OrderEnvelope:
    """Order number n: its customer, its currency and its amounts follow from n."""
    line = contract.OrderLine(
        sku=f"sku-{n % 37}", quantity=1 + n % 4, unit_price=Decimal(f"{1 + n % 50}.{n % 100:02d}")
    )
    return contract.OrderEnvelope(
        order_id=contract.new_order_id(),
        customer_id=f"c-{n % CUSTOMERS}",
        items=(line,),
        total=contract.order_total((line,)),
        currency=CURRENCIES[n % len(CURRENCIES)],
        accepted_at=now,
        accept_by=now + timedelta(seconds=ACCEPT_FOR_S),
    )


async def create_orders_topic(workspace: LabWorkspace, name: str) -> str:
    """A topic of the run's own with the orders topic's configs: LogAppendTime above all."""
    topic = await workspace.create_topic(name)
    kafka = workspace.settings.kafka
    # Set just after creation, as the lab intends: app.topics' line for each change would read
    # as a warning about a topic someone had configured otherwise.
    topics_log = logging.getLogger("app.topics")
    level = topics_log.level
    topics_log.setLevel(logging.ERROR)
    try:
        async with admin_client(kafka) as admin:
            await bounded(
                kafka,
                f"setting {topic}'s configs",
                enforce_topic_configs(admin, topic, topic_configs(kafka)),
            )
    finally:
        topics_log.setLevel(level)
    return topic


class OrderSource:
    """A producer of lab orders (acks=all, idempotent), counting what was acknowledged."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-lab-analytics-source",
            request_timeout_ms=kafka.request_timeout_ms,
            **kafka_client_security(kafka),
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )
        self.orders = 0  # acknowledged
        self.revenue: defaultdict[str, Decimal] = defaultdict(Decimal)  # acknowledged
        self._sent = 0

    async def __aenter__(self) -> OrderSource:
        await bounded(self._kafka, "starting the lab's producer", self._producer.start())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await close_quietly(self._producer.stop())

    async def send(self, topic: str, count: int, rate: float | None) -> None:
        """Send `count` more orders, `rate` a second (None: as fast as the client takes them),
        and wait for every acknowledgement (bounded: an idempotent batch never expires)."""
        pending: list[tuple[contract.OrderEnvelope, asyncio.Future[object]]] = []
        began = time.monotonic()
        for i in range(count):
            if rate is not None and i % max(1, int(rate * TICK_S)) == 0:
                due = began + i / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            envelope = lab_order(self._sent, datetime.now(UTC))
            self._sent += 1
            value, headers = contract.encode(envelope, f"lab-{self._sent}")
            future = await self._producer.send(topic, value, key=envelope.key, headers=headers)
            pending.append((envelope, future))
        async with asyncio.timeout(FLUSH_S):
            for envelope, future in pending:
                await future
                self.orders += 1
                self.revenue[envelope.currency] += envelope.total

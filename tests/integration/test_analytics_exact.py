"""The exact analytics mode under a kill -9 loop, on the real broker and PostgreSQL: two
`orders analytics` members of one group, each killed -9 again and again while orders stream in,
and every window holds exactly the orders the broker appended in it, window for window."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from aiokafka.structs import ConsumerRecord, TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import contract
from app.analytics import window_store
from app.analytics.windows import window_start_ms
from app.lab.analytics.members import AnalyticsSlot, kill_every
from app.lab.analytics.stream import OrderSource
from app.settings import AnalyticsSettings
from app.topics import ensure_topics
from tests.integration.conftest import make_settings
from tests.integration.endpoints import Endpoints
from tests.integration.kafka_tools import end_offsets, read_topic

ORDERS = 2400
RATE = 300.0
WINDOW_S = 2  # short windows, so that a short stream spans several
GRACE_S = 1.0
KILL_EVERY_S = 1.2
CATCH_UP_S = 60.0

Windows = dict[tuple[datetime, str], tuple[int, Decimal]]


async def stored_windows(engine: AsyncEngine, group: str) -> Windows:
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT window_start, currency, orders, revenue"
                " FROM revenue_windows WHERE group_id = :group"
            ),
            {"group": group},
        )
        return {(row.window_start, row.currency): (row.orders, row.revenue) for row in result}


def expected_windows(
    records: list[ConsumerRecord[bytes, bytes]], window_s: int = WINDOW_S
) -> Windows:
    """The oracle: every order on the topic, in the window of its broker append time."""
    windows: defaultdict[tuple[datetime, str], tuple[int, Decimal]] = defaultdict(
        lambda: (0, Decimal(0))
    )
    for record in records:
        envelope = contract.decode(record.value)
        start = window_start_ms(record.timestamp, window_s)
        key = (datetime.fromtimestamp(start / 1000, UTC), envelope.currency)
        orders, revenue = windows[key]
        windows[key] = (orders + 1, revenue + envelope.total)
    return dict(windows)


async def test_every_window_holds_exactly_its_orders_through_kill_9(
    endpoints: Endpoints, database_url: str, engine: AsyncEngine, run_id: str
) -> None:
    settings = make_settings(endpoints, database_url)
    group = f"analytics-exact-{run_id}"
    settings = settings.model_copy(
        update={"analytics": AnalyticsSettings(window_s=WINDOW_S, grace_s=GRACE_S)}
    )
    await ensure_topics(settings.kafka)  # LogAppendTime, as the orders topic always is
    topic = settings.kafka.orders_topic
    slots = [
        AnalyticsSlot(settings, "exact", topic, group, instance=f"exact-{name}")
        for name in ("a", "b")
    ]
    try:
        for slot in slots:
            await slot.start()
        stop = asyncio.Event()
        kills = [
            asyncio.create_task(kill_every(slot, KILL_EVERY_S, i / len(slots), stop))
            for i, slot in enumerate(slots)
        ]
        try:
            async with OrderSource(settings.kafka) as source:
                await source.send(topic, ORDERS, RATE)
        finally:
            stop.set()
            await asyncio.gather(*kills)
        ends = {
            TopicPartition(topic, partition): offset
            for partition, offset in (await end_offsets(endpoints.kafka_bootstrap, topic)).items()
        }
        async with asyncio.timeout(CATCH_UP_S):
            while not await slots[0].reached(engine, ends):
                for slot in slots:
                    slot.check()
                await asyncio.sleep(0.2)
        for slot in slots:
            await slot.stop()
    finally:
        for slot in slots:
            await slot.end()

    assert source.orders == ORDERS
    assert all(slot.kills >= 3 for slot in slots)
    records = await read_topic(endpoints.kafka_bootstrap, topic)
    assert len(records) == ORDERS
    expected = expected_windows(records)
    assert len(expected) >= 8  # the stream spans several windows in each currency
    assert await stored_windows(engine, group) == expected

    # What GET /analytics/revenue serves: the closed windows, each exactly as stored.
    async with engine.connect() as connection:
        closed = await window_store.closed_windows(
            connection,
            group_id=group,
            topic=topic,
            grace_s=GRACE_S,
            start=datetime(2000, 1, 1, tzinfo=UTC),
            end=datetime.now(UTC) + timedelta(days=1),
            currency=None,
            limit=10_000,
        )
    assert closed.closed_through is not None
    assert closed.windows
    for window in closed.windows:
        assert window.window_end <= closed.closed_through
        key = (window.window_start, window.currency)
        assert (window.orders, window.revenue) == expected[key]

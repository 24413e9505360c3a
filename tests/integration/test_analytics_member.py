"""One analytics member in this process, on the real broker and PostgreSQL: what closes a window
when most partitions stay idle, what a slow Kafka commit does (nothing), and what a fetch that
breaks half-way does (it skips no order)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.records_to_delete import RecordsToDelete
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import contract
from app.analytics import exact, window_store
from app.analytics.member import AnalyticsMember
from app.analytics.windows import window_end_ms, window_start_ms
from app.db.positions import read_positions
from app.lab.analytics.stream import OrderSource, lab_order
from app.settings import AnalyticsSettings, Settings
from app.topics import ensure_topics
from tests.integration.conftest import make_settings
from tests.integration.endpoints import Endpoints
from tests.integration.kafka_tools import end_offsets, read_topic
from tests.integration.test_analytics_exact import WINDOW_S, expected_windows, stored_windows

WAIT_S = 30.0


async def analytics_settings(
    endpoints: Endpoints, database_url: str, run_id: str, **worker: object
) -> Settings:
    settings = make_settings(endpoints, database_url, **worker)
    settings = settings.model_copy(
        update={
            "analytics": AnalyticsSettings(
                group_id=f"analytics-member-{run_id}", window_s=WINDOW_S, grace_s=0.5
            )
        }
    )
    await ensure_topics(settings.kafka)  # LogAppendTime, as the orders topic always is
    return settings


@asynccontextmanager
async def running(member: AnalyticsMember) -> AsyncIterator[AnalyticsMember]:
    await member.start()
    task = asyncio.create_task(member.run())
    try:
        yield member
    finally:
        member.request_stop()
        async with asyncio.timeout(WAIT_S):
            await task
        await member.close()


async def send_to(
    settings: Settings, partitions: list[int], count: int, pause_s: float = 0.1
) -> None:
    """`count` lab orders, spread over `partitions` only (explicitly, whatever their keys)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        async with asyncio.timeout(WAIT_S):
            for n in range(count):
                envelope = lab_order(n, datetime.now(UTC))
                value, headers = contract.encode(envelope, f"member-test-{n}")
                await producer.send_and_wait(
                    settings.kafka.orders_topic,
                    value,
                    key=envelope.key,
                    headers=headers,
                    partition=partitions[n % len(partitions)],
                )
                await asyncio.sleep(pause_s)  # the orders span more than one window
    finally:
        await producer.stop()


async def wait_for_positions(engine: AsyncEngine, settings: Settings, bootstrap: str) -> None:
    """Until the group's positions in PostgreSQL are at the topic's ends."""
    topic, group = settings.kafka.orders_topic, settings.analytics.group_id
    ends = {p: end for p, end in (await end_offsets(bootstrap, topic)).items() if end > 0}
    async with asyncio.timeout(WAIT_S):
        while True:
            async with engine.connect() as connection:
                stored = await read_positions(connection, group, topic, list(ends))
            if all(stored.get(p, 0) >= end for p, end in ends.items()):
                return
            await asyncio.sleep(0.1)


async def counted_orders(engine: AsyncEngine, group: str) -> int:
    async with engine.connect() as connection:
        total = await connection.scalar(
            text("SELECT coalesce(sum(orders), 0) FROM revenue_windows WHERE group_id = :g"),
            {"g": group},
        )
    return int(total)


async def test_windows_close_although_five_partitions_never_get_a_record(
    endpoints: Endpoints, database_url: str, engine: AsyncEngine, run_id: str
) -> None:
    """A partition read to its end counts as having reached the instant its leader last
    answered: without that, five idle partitions would hold the watermark unknown forever."""
    settings = await analytics_settings(endpoints, database_url, run_id)
    group, topic = settings.analytics.group_id, settings.kafka.orders_topic
    async with running(AnalyticsMember(settings, engine, exact)):
        await send_to(settings, [0], 30)
        records = await read_topic(endpoints.kafka_bootstrap, topic)
        last_end_ms = window_end_ms(window_start_ms(records[-1].timestamp, WINDOW_S), WINDOW_S)
        last_end = datetime.fromtimestamp(last_end_ms / 1000, UTC)
        async with asyncio.timeout(WAIT_S):
            while True:
                async with engine.connect() as connection:
                    closed = await window_store.closed_windows(
                        connection,
                        group_id=group,
                        topic=topic,
                        grace_s=settings.analytics.grace_s,
                        start=datetime(2000, 1, 1, tzinfo=UTC),
                        end=datetime.now(UTC) + timedelta(days=1),
                        currency=None,
                        limit=1000,
                    )
                if closed.closed_through is not None and closed.closed_through >= last_end:
                    break
                await asyncio.sleep(0.2)

    assert {record.partition for record in records} == {0}
    assert len(records) == 30
    expected = expected_windows(records)
    assert len(expected) >= 2
    # Every window is closed and served, exactly as the topic holds it.
    served = {(w.window_start, w.currency): (w.orders, w.revenue) for w in closed.windows}
    assert served == expected


async def test_a_slow_kafka_commit_never_fails_a_stored_batch(
    endpoints: Endpoints, database_url: str, engine: AsyncEngine, run_id: str
) -> None:
    """The exact mode's Kafka commit only mirrors PostgreSQL's positions: a commit slower than
    the batch timeout must not turn the stored batch into a failed one (retried, then fenced)."""
    settings = await analytics_settings(
        endpoints, database_url, run_id, batch_timeout_s=1.0, commit_timeout_s=5.0
    )
    group = settings.analytics.group_id
    member = AnalyticsMember(settings, engine, exact)
    commit = member.consumer.commit
    commits = 0

    async def slow_commit(offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        nonlocal commits
        await asyncio.sleep(1.5)  # the broker answers, late: past the batch timeout
        await commit(offsets)
        commits += 1

    member.consumer.commit = slow_commit  # type: ignore[method-assign]
    async with running(member):
        async with OrderSource(settings.kafka) as source:
            await source.send(settings.kafka.orders_topic, 200, 400.0)
        await wait_for_positions(engine, settings, endpoints.kafka_bootstrap)

    assert commits > 0
    assert member.stats.retries == 0
    assert member.stats.fenced == 0
    records = await read_topic(endpoints.kafka_bootstrap, settings.kafka.orders_topic)
    assert len(records) == 200
    assert await stored_windows(engine, group) == expected_windows(records)


async def send_undecodable(settings: Settings, partition: int) -> None:
    """A record whose header name is not UTF-8: aiokafka's decoder raises for the whole fetch
    (the broker takes it). Python's record builder is given a valid name, then one byte of it
    is replaced before the batch's CRC is computed."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        batch = producer.create_batch()
        batch._builder = _DefaultRecordBatchBuilderPy(
            2,
            0,
            is_transactional=0,
            producer_id=-1,
            producer_epoch=-1,
            base_sequence=0,
            batch_size=16384,
        )
        batch.append(key=b"poison", value=b"{}", timestamp=None, headers=[("\u00ffname", b"")])
        buffer = batch._builder._buffer
        at = buffer.find("\u00ffname".encode())
        assert at > 0
        buffer[at] = 0xFF  # 0xC3 0xBF (UTF-8 for U+00FF) becomes 0xFF 0xBF: not UTF-8
        async with asyncio.timeout(WAIT_S):
            await (
                await producer.send_batch(batch, settings.kafka.orders_topic, partition=partition)
            )
    finally:
        await producer.stop()


async def test_a_fetch_that_breaks_half_way_skips_no_order(
    endpoints: Endpoints,
    database_url: str,
    engine: AsyncEngine,
    run_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A record aiokafka cannot decode makes getmany raise after it has taken the other
    partitions' first records from its buffer: every partition must go back, those with no
    batch yet too, or their orders are never counted. Meanwhile the member backs off longer
    and longer; once an operator deletes the record, every order is counted, once."""
    settings = await analytics_settings(
        endpoints, database_url, run_id, retry_backoff_initial_s=0.05, retry_backoff_max_s=0.4
    )
    group, topic = settings.analytics.group_id, settings.kafka.orders_topic
    poisoned = 5  # the last partition a fetch hands over: the others' records are taken first
    await send_undecodable(settings, poisoned)
    await send_to(settings, [0, 1, 2, 3, 4, poisoned], 60, pause_s=0.0)
    caplog.set_level(logging.ERROR, logger="app.analytics.member")

    def failures() -> list[float]:
        return [
            float(record.args[1])
            for record in caplog.records
            if "cannot decode" in record.getMessage() and isinstance(record.args, tuple)
        ]

    async with running(AnalyticsMember(settings, engine, exact)) as member:
        async with asyncio.timeout(WAIT_S):
            while len(failures()) < 4:  # noqa: ASYNC110 - polling the log
                await asyncio.sleep(0.1)
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
        await admin.start()
        try:
            tp = TopicPartition(topic, poisoned)
            await admin.delete_records({tp: RecordsToDelete(before_offset=1)})
        finally:
            await admin.close()
        deadline = asyncio.get_running_loop().time() + WAIT_S / 2
        while await counted_orders(engine, group) < 60:
            if asyncio.get_running_loop().time() > deadline:
                break  # some orders were skipped: the assertion below says how many
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # nothing more is counted: nothing twice

    assert await counted_orders(engine, group) == 60
    assert member.stats.orders == 60
    assert failures()[:4] == [0.1, 0.2, 0.4, 0.4]  # doubling, up to WORKER_RETRY_BACKOFF_MAX_S

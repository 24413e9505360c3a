"""The worker's metrics, readiness rule, stall detector and status server, without services: the
detector runs against a stand-in member whose log ends and stored positions the test sets."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app import contract
from app.db.positions import PartitionSpan, StoredPosition
from app.settings import Settings, WorkerSettings
from app.worker import stall_detector
from app.worker.batch_writer import BatchOutcome
from app.worker.conditions import NO_KNOWN_CAUSE, Conditions
from app.worker.consumer import OrderWorker
from app.worker.metrics import NoMetrics, WorkerMetrics, worker_metrics
from app.worker.order_store import IncomingOrder
from app.worker.readiness import is_ready, overdue_stalls
from app.worker.records import PreparedBatch
from app.worker.stall_detector import StallDetector
from app.worker.status_server import StatusServer, StatusServerError, status_app

TOPIC = "orders"


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry as exposed: (name, sorted labels) -> value."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return samples(registry).get((name, tuple(sorted(labels.items()))))


def order(partition: int, offset: int, accepted_at: datetime) -> IncomingOrder:
    items = (contract.OrderLine(sku="sku-1", quantity=1, unit_price=Decimal(3)),)
    envelope = contract.OrderEnvelope(
        order_id=uuid.uuid4(),
        customer_id="c-1",
        items=items,
        total=contract.order_total(items),
        currency="EUR",
        accepted_at=accepted_at,
        accept_by=accepted_at + timedelta(seconds=30),
    )
    record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        TOPIC, partition, offset, 0, 1, b"c-1", b"{}", None, 3, 2, ()
    )
    return IncomingOrder(envelope, partition, offset, record)


# --- metrics ------------------------------------------------------------------------------------


def test_a_written_batch_counts_new_orders_duplicates_and_their_end_to_end_latency() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(TOPIC, registry)
    committed = datetime(2030, 1, 1, tzinfo=UTC)
    orders = [order(3, n, committed - timedelta(seconds=s)) for n, s in enumerate((0.2, 0.7, 40))]
    written = PreparedBatch(orders=orders, poison=[], spans=[PartitionSpan(3, 0, 3)])
    outcome = BatchOutcome(written=written, inserted=2, stored=orders[:2], duplicates=1)

    metrics.batch_written(outcome, 0.004, committed)

    assert value(registry, "orders_stored_total") == 2
    assert value(registry, "orders_duplicates_absorbed_total") == 1
    assert value(registry, "orders_end_to_end_seconds_count") == 2  # the duplicate is not
    assert value(registry, "orders_end_to_end_seconds_sum") == pytest.approx(0.9)
    assert value(registry, "orders_end_to_end_seconds_bucket", le="0.25") == 1
    assert value(registry, "orders_end_to_end_seconds_bucket", le="1.0") == 2
    assert value(registry, "orders_end_to_end_seconds_bucket", le="+Inf") == 2
    assert value(registry, "orders_worker_batch_records_count") == 1
    assert value(registry, "orders_worker_batch_records_sum") == 3
    assert value(registry, "orders_worker_transaction_seconds_count") == 1


def test_the_end_to_end_histogram_adds_up_across_batches() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(TOPIC, registry)
    committed = datetime(2030, 1, 1, tzinfo=UTC)
    for ages in ((0.001, 0.02), (0.02, 500.0, 3.0)):
        orders = [order(0, n, committed - timedelta(seconds=a)) for n, a in enumerate(ages)]
        written = PreparedBatch(orders=orders, poison=[], spans=[PartitionSpan(0, 0, len(ages))])
        outcome = BatchOutcome(written=written, inserted=len(orders), stored=orders)
        metrics.batch_written(outcome, 0.01, committed)
    assert value(registry, "orders_end_to_end_seconds_count") == 5
    assert value(registry, "orders_end_to_end_seconds_bucket", le="0.005") == 1
    assert value(registry, "orders_end_to_end_seconds_bucket", le="0.025") == 3
    assert value(registry, "orders_end_to_end_seconds_bucket", le="5.0") == 4
    assert value(registry, "orders_end_to_end_seconds_bucket", le="300.0") == 4
    assert value(registry, "orders_end_to_end_seconds_bucket", le="+Inf") == 5


def test_partition_gauges_are_removed_when_the_partition_is_revoked() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(TOPIC, registry)
    metrics.partition_status(1, lag=7, stalled=True, lag_growing=False)
    metrics.partition_status(2, lag=0, stalled=False, lag_growing=False)
    assert value(registry, "orders_consumer_lag_records", topic=TOPIC, partition="1") == 7
    assert value(registry, "orders_partition_stalled", topic=TOPIC, partition="1") == 1

    metrics.forget_partitions([1, 5])  # 5 was never reported: no error

    assert value(registry, "orders_consumer_lag_records", topic=TOPIC, partition="1") is None
    assert value(registry, "orders_partition_stalled", topic=TOPIC, partition="1") is None
    assert value(registry, "orders_consumer_lag_records", topic=TOPIC, partition="2") == 0


def test_every_metric_of_the_contract_is_exposed_with_its_type() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(TOPIC, registry)
    metrics.partition_status(0, lag=0, stalled=False, lag_growing=False)
    metrics.fetched({TopicPartition(TOPIC, 0): []})
    text = generate_latest(registry).decode()
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    expected = {
        "orders_worker_records_fetched": "counter",
        "orders_stored": "counter",
        "orders_duplicates_absorbed": "counter",
        "orders_dead_lettered": "counter",
        "orders_quarantined": "counter",
        "orders_expired": "counter",
        "orders_fenced": "counter",
        "orders_skipped_offsets": "counter",
        "orders_worker_batch_records": "histogram",
        "orders_worker_transaction_seconds": "histogram",
        "orders_worker_batch_retries": "counter",
        "orders_worker_backing_off": "gauge",
        "orders_kafka_commits": "counter",
        "orders_kafka_commit_failures": "counter",
        "orders_worker_rebalances": "counter",
        "orders_worker_assigned_partitions": "gauge",
        "orders_consumer_lag_records": "gauge",
        "orders_partition_stalled": "gauge",
        "orders_partition_lag_growing": "gauge",
        "orders_end_to_end_seconds": "histogram",
        "orders_worker_ready": "gauge",
    }
    assert {name: types.get(name) for name in expected} == expected
    assert 'orders_worker_records_fetched_total{partition="0",topic="orders"}' in text


def test_metrics_off_register_and_count_nothing() -> None:
    registry = CollectorRegistry()
    metrics = worker_metrics(False, TOPIC, registry)
    assert type(metrics) is NoMetrics
    metrics.batch_written(BatchOutcome(inserted=3), 0.1, datetime.now(UTC))
    metrics.partition_status(0, lag=3, stalled=True, lag_growing=True)
    assert generate_latest(registry) == b""


# --- readiness and conditions -------------------------------------------------------------------


def test_ready_once_joined_and_until_a_stall_outlasts_the_bound() -> None:
    ready = {"joined": True, "stopping": False, "now": 100.0, "unready_after_s": 30.0}
    assert is_ready(**ready, stalled_since={})  # type: ignore[arg-type]
    assert is_ready(**ready, stalled_since={3: 71.0})  # type: ignore[arg-type]  # 29 s
    assert not is_ready(**ready, stalled_since={3: 70.0})  # type: ignore[arg-type]
    assert not is_ready(**{**ready, "joined": False}, stalled_since={})  # type: ignore[arg-type]
    assert not is_ready(**{**ready, "stopping": True}, stalled_since={})  # type: ignore[arg-type]
    assert overdue_stalls({1: 0.0, 2: 90.0, 0: 10.0}, 100.0, 30.0) == [0, 1]


def test_the_most_specific_cause_is_named() -> None:
    conditions = Conditions()
    assert conditions.cause(2) == NO_KNOWN_CAUSE
    conditions.note("batch", "retrying a failed batch")
    conditions.hold(2, "blocked by fault point")
    assert conditions.cause(2) == "blocked by fault point"
    assert conditions.cause(1) == "retrying a failed batch"
    conditions.release([2])
    conditions.clear("batch")
    assert conditions.cause(2) == NO_KNOWN_CAUSE


# --- the stall detector, on a stand-in member ----------------------------------------------------


class _Member:
    """What the detector reads of an OrderWorker: owned partitions, log ends, the engine."""

    def __init__(self, partitions: list[int]) -> None:
        self.owned = [TopicPartition(TOPIC, p) for p in partitions]
        self.ends: dict[int, int] = dict.fromkeys(partitions, 0)
        self.positions: dict[int, StoredPosition] = {}
        self.broker_down = False
        self.database_down = False
        self.joined = True
        self.stopping = False
        self.conditions = Conditions()
        self.engine = self

    def owned_partitions(self) -> list[TopicPartition]:
        return list(self.owned)

    async def log_ends(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        if self.broker_down:
            raise ConnectionError("broker away")
        return {tp: self.ends[tp.partition] for tp in partitions}

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[_Member]:
        if self.database_down:
            raise OSError("connection refused")
        yield self

    def store(self, partition: int, offset: int, idle_s: float = 0.0) -> None:
        self.positions[partition] = StoredPosition(partition, offset, "me", idle_s)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def member(monkeypatch: pytest.MonkeyPatch) -> _Member:
    found = _Member([0, 1])

    async def read_position_ages(
        connection: _Member, group_id: str, topic: str, partitions: list[int]
    ) -> dict[int, StoredPosition]:
        return {p: s for p, s in connection.positions.items() if p in partitions}

    monkeypatch.setattr(stall_detector, "read_position_ages", read_position_ages)
    return found


def detector_for(member: _Member, clock: _Clock, registry: CollectorRegistry) -> StallDetector:
    settings = Settings(
        worker=WorkerSettings(
            stall_after_s=10, unready_after_stall_s=5, lag_window=3, lag_interval_s=1
        )
    )
    worker: Any = member
    return StallDetector(worker, settings, WorkerMetrics(TOPIC, registry), clock)


async def test_a_partition_whose_position_stands_still_stalls_once_then_clears(
    member: _Member, caplog: pytest.LogCaptureFixture
) -> None:
    clock, registry = _Clock(), CollectorRegistry()
    detector = detector_for(member, clock, registry)
    member.store(0, 0)
    member.store(1, 0)
    member.conditions.hold(1, "blocked by fault point")
    caplog.set_level(logging.INFO, logger=stall_detector.__name__)

    for second in range(0, 17):  # partition 0 keeps up; partition 1 is held at 0
        clock.now = 1000.0 + second
        member.ends = {0: second * 10, 1: second * 10}
        member.store(0, second * 10)
        await detector.sample()
        stalled = value(registry, "orders_partition_stalled", topic=TOPIC, partition="1")
        if second < 11:  # lag since second 1; stuck for 10 s at second 11
            assert stalled == 0, second
        assert detector.ready() is (second < 16), second  # 11 + 5
    assert value(registry, "orders_partition_stalled", topic=TOPIC, partition="1") == 1
    assert value(registry, "orders_partition_stalled", topic=TOPIC, partition="0") == 0
    assert value(registry, "orders_consumer_lag_records", topic=TOPIC, partition="1") == 160
    assert value(registry, "orders_worker_ready") == 0
    stalls = [r for r in caplog.records if "STALLED" in r.getMessage()]
    assert len(stalls) == 1, caplog.text
    assert stalls[0].levelno == logging.WARNING
    assert "partition 1 STALLED" in stalls[0].getMessage()
    assert "cause: blocked by fault point" in stalls[0].getMessage()

    clock.now += 1
    member.store(1, 160)
    await detector.sample()
    assert value(registry, "orders_partition_stalled", topic=TOPIC, partition="1") == 0
    assert value(registry, "orders_consumer_lag_records", topic=TOPIC, partition="1") == 0
    assert detector.ready()
    assert any(
        r.levelno == logging.INFO and "partition 1 OK again (was STALLED)" in r.getMessage()
        for r in caplog.records
    )


async def test_a_member_that_stores_nothing_anywhere_is_stopped(member: _Member) -> None:
    clock, registry = _Clock(), CollectorRegistry()
    detector = detector_for(member, clock, registry)
    member.store(0, 5, idle_s=600)
    member.store(1, 5, idle_s=600)
    for second in range(12):
        clock.now = 1000.0 + second
        member.ends = {0: 6, 1: 5}
        member.store(0, 5, idle_s=600 + second)
        member.store(1, 5, idle_s=600 + second)
        await detector.sample()
    assert detector.status(0) == "STOPPED"
    assert detector.status(1) == "OK"
    assert value(registry, "orders_partition_stalled", topic=TOPIC, partition="0") == 1


async def test_unreadable_positions_count_as_unmoved_and_never_raise(
    member: _Member, caplog: pytest.LogCaptureFixture
) -> None:
    clock, registry = _Clock(), CollectorRegistry()
    detector = detector_for(member, clock, registry)
    member.store(0, 0)
    member.store(1, 0)
    member.ends = {0: 4, 1: 0}
    await detector.sample()
    member.database_down = True
    member.broker_down = True
    for second in range(1, 12):
        clock.now = 1000.0 + second
        await detector.sample()
    assert detector.status(0) == "STALLED"
    assert "database unreachable" in member.conditions.cause(0)
    failures = [r for r in caplog.records if "could not read" in r.getMessage()]
    assert len(failures) == 2, caplog.text  # once each for the broker and the database


async def test_revoked_partitions_leave_the_detector_and_the_gauges(member: _Member) -> None:
    clock, registry = _Clock(), CollectorRegistry()
    detector = detector_for(member, clock, registry)
    member.ends = {0: 3, 1: 3}
    await detector.sample()
    assert value(registry, "orders_consumer_lag_records", topic=TOPIC, partition="1") == 3
    member.owned = [TopicPartition(TOPIC, 0)]
    clock.now += 1
    await detector.sample()
    assert value(registry, "orders_consumer_lag_records", topic=TOPIC, partition="1") is None
    assert detector.status(1) is None


# --- what the member itself reports -----------------------------------------------------------


@asynccontextmanager
async def _worker(registry: CollectorRegistry, **worker: Any) -> AsyncIterator[OrderWorker]:
    # Never started, so no broker is reached; these tests never use the engine.
    engine: Any = None
    settings = Settings(worker=WorkerSettings(**worker))
    member = OrderWorker(settings, engine, "w-test", metrics=WorkerMetrics(TOPIC, registry))
    try:
        yield member
    finally:
        await member.close()


async def test_revoked_partitions_stop_being_owned_before_the_batch_in_flight_ends() -> None:
    """The consumer's assignment() keeps the revoked partitions until the next assignment
    arrives: the detector must not judge (nor report) them meanwhile."""
    registry = CollectorRegistry()
    kept, gone = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    async with _worker(registry) as worker:
        worker._owned = {gone, kept}
        assert worker.owned_partitions() == [kept, gone]
        async with worker._in_flight:  # a batch in flight: the revocation waits for it
            revoking = asyncio.create_task(worker._on_revoked({gone}))
            await asyncio.sleep(0.05)
            assert not revoking.done()
            assert worker.owned_partitions() == [kept]
        await revoking
        assert worker.owned_partitions() == [kept]
    assert value(registry, "orders_worker_assigned_partitions") == 1


@pytest.mark.parametrize(
    "failure", [KafkaConnectionError("broker away"), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "")]
)
async def test_the_pause_after_a_failed_fetch_shows_as_backing_off(failure: Exception) -> None:
    registry = CollectorRegistry()
    async with _worker(registry, retry_backoff_initial_s=0.2, retry_backoff_max_s=0.4) as worker:
        pausing = asyncio.create_task(worker._fetch_failed(failure))
        await asyncio.sleep(0.1)
        assert not pausing.done()
        assert value(registry, "orders_worker_backing_off") == 1
        await pausing
    assert value(registry, "orders_worker_backing_off") == 0


# --- the status server --------------------------------------------------------------------------


async def test_the_status_server_serves_metrics_health_and_readiness() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(TOPIC, registry)
    metrics.rebalanced("assigned", 4)
    ready = [False]
    app = status_app(lambda: ready[0], metrics=True, registry=registry)
    server = StatusServer("127.0.0.1", 0, app)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    await server.start()
    try:
        # The worker's runner owns the signals: uvicorn must not have taken them.
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            refused = await client.get("/readyz")
            assert (refused.status_code, refused.json()) == (503, {"status": "not ready"})
            ready[0] = True
            assert (await client.get("/readyz")).status_code == 200
            scraped = await client.get("/metrics")
            assert scraped.status_code == 200
            assert "orders_worker_assigned_partitions 4.0" in scraped.text
            assert (await client.get("/elsewhere")).status_code == 404
    finally:
        await server.stop(2)


async def test_metrics_off_means_no_metrics_route_but_health_still_answers() -> None:
    server = StatusServer("127.0.0.1", 0, status_app(lambda: True, metrics=False))
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            assert (await client.get("/metrics")).status_code == 404
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
    finally:
        await server.stop(2)


async def test_a_port_in_use_fails_the_start_with_the_settings_to_change() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = StatusServer("127.0.0.1", port, status_app(lambda: True, metrics=True))
        with pytest.raises(StatusServerError, match="WORKER_METRICS_PORT"):
            await server.start()

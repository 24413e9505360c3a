"""Fault injection: processes killed and frozen for real, then the oracle.

Every scenario ends the same way: faults healed, lag drained, and `check_ledger` finds zero lost,
zero duplicated, zero out of order, zero unexpected; stored positions never moved backwards.
The scenarios marked `chaos` are the long ones (`make chaos`); the rest run in `make test` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psutil
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_engine
from app.db.migrate import upgrade_database
from app.db.tables import orders
from app.settings import DatabaseSettings, Settings
from app.topics import ensure_topics
from tests.integration.api_client import api_client
from tests.integration.chaos import WorkerPool, watching_positions
from tests.integration.conftest import make_settings
from tests.integration.endpoints import Endpoints
from tests.integration.kafka_tools import end_offsets, non_empty, read_topic
from tests.integration.load import customers_for, orders_accepted, place_orders
from tests.integration.oracle import (
    Expectations,
    LedgerReport,
    check_ledger,
    stored_positions,
    wait_until_stored,
)
from tests.integration.throwaway import (
    OUTAGE_POSTGRES_PORT,
    ThrowawayCluster,
    throwaway_cluster,
    throwaway_postgres,
)
from tests.integration.worker_harness import committed_offsets

# Quicker failure detection than production defaults, so scenarios take seconds, not minutes.
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def report(name: str, sent: int, expected: Expectations, ledger: LedgerReport) -> None:
    """One line per scenario for the record: orders sent, 202s, what the oracle found."""
    print(f"\nFAULT {name}: sent={sent} accepted_202={expected.total} oracle: {ledger}")


async def assert_ledger_holds(
    name: str, engine: AsyncEngine, settings: Settings, expected: Expectations, sent: int
) -> None:
    assert await wait_until_stored(engine, expected, timeout=180) == expected.total
    ledger = await check_ledger(engine, expected)
    report(name, sent, expected, ledger)
    assert ledger.holds, str(ledger)
    ends = await end_offsets(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
    group, topic = settings.worker.group_id, settings.kafka.orders_topic
    assert await stored_positions(engine, group, topic) == non_empty(ends)


@pytest.fixture
def pools(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerPool]]:
    """Worker pools that are stopped however the test ends."""
    made: list[WorkerPool] = []

    def make(settings: Settings) -> WorkerPool:
        made.append(WorkerPool(settings, tmp_path))
        return made[-1]

    yield make
    for pool in made:
        pool.stop_all()


@contextlib.asynccontextmanager
async def fresh_scenario(
    endpoints: Endpoints, database_url: str, **worker: object
) -> AsyncIterator[Settings]:
    settings = make_settings(endpoints, database_url, **{**FAST_GROUP, **worker})
    await ensure_topics(settings.kafka)
    yield settings


# --- 1. kill -9 a random worker every 2-5 s -----------------------------------------------------


@pytest.mark.chaos
@pytest.mark.timeout(900)
async def test_kill_9_a_random_worker_every_few_seconds(
    endpoints: Endpoints,
    database_url: str,
    engine: AsyncEngine,
    run_id: str,
    tmp_path: Path,
    pools: Callable[[Settings], WorkerPool],
) -> None:
    async with fresh_scenario(endpoints, database_url) as settings:
        pool = pools(settings)
        pool.start(3)
        expected = Expectations()
        async with watching_positions(engine, settings) as watch, api_client(settings) as client:
            load = asyncio.create_task(
                place_orders(client, expected, customers_for(run_id, 200), per_customer=50)
            )
            while not load.done():
                await asyncio.wait({load}, timeout=random.uniform(2, 5))
                if pool.kill_one() is not None:
                    pool.start(1)  # restart it each time
            await load
            await assert_ledger_holds("kill -9 loop", engine, settings, expected, 10_000)
        pool.stop_all()
        assert pool.killed >= 2
        assert watch.regressions == []


# --- 2. killed between the DB commit and the Kafka commit -------------------------------------


async def load_until_killed_at(
    point: str, after_batches: int, pool: WorkerPool, settings: Settings, run_id: str
) -> Expectations:
    """1,000 orders for 40 customers, and a lone worker that SIGKILLs itself at `point`."""
    [doomed] = pool.start(
        1, ORDERS_FAULT_POINT=point, ORDERS_FAULT_AFTER_BATCHES=str(after_batches)
    )
    expected = await orders_accepted(settings, customers_for(run_id, 40), per_customer=25)
    assert await asyncio.to_thread(doomed.wait, 60) == -signal.SIGKILL
    return expected


async def test_a_worker_killed_after_its_db_commit_redoes_nothing(
    endpoints: Endpoints,
    database_url: str,
    engine: AsyncEngine,
    run_id: str,
    tmp_path: Path,
    pools: Callable[[Settings], WorkerPool],
) -> None:
    async with fresh_scenario(endpoints, database_url, max_records=100) as settings:
        pool = pools(settings)
        expected = await load_until_killed_at("after_db_commit", 3, pool, settings, run_id)
        group, topic = settings.worker.group_id, settings.kafka.orders_topic
        in_db = await stored_positions(engine, group, topic)
        in_kafka = await committed_offsets(settings)
        # The last batch is in PostgreSQL but its Kafka commit never happened.
        assert any(in_kafka.get(p, 0) < offset for p, offset in in_db.items())

        async with watching_positions(engine, settings) as watch:
            [successor] = pool.start(1)
            await assert_ledger_holds("after DB commit", engine, settings, expected, 1000)
        assert successor.stop() == 0
        assert watch.regressions == []
        assert await committed_offsets(settings) == await stored_positions(engine, group, topic)


# --- 3. killed inside the DB transaction ------------------------------------------------------


async def test_a_worker_killed_inside_its_transaction_leaves_nothing_partial(
    endpoints: Endpoints,
    database_url: str,
    engine: AsyncEngine,
    run_id: str,
    tmp_path: Path,
    pools: Callable[[Settings], WorkerPool],
) -> None:
    async with fresh_scenario(endpoints, database_url, max_records=100) as settings:
        pool = pools(settings)
        expected = await load_until_killed_at("inside_db_transaction", 2, pool, settings, run_id)

        # Nothing partial: on each partition, exactly the orders below the stored position.
        group, topic = settings.worker.group_id, settings.kafka.orders_topic
        positions = await stored_positions(engine, group, topic)
        async with engine.connect() as connection:
            per_partition = dict(
                (
                    await connection.execute(
                        select(orders.c.kafka_partition, func.count())
                        .where(orders.c.customer_id.in_(list(expected.accepted)))
                        .group_by(orders.c.kafka_partition)
                    )
                ).all()
            )
        assert per_partition == {p: n for p, n in positions.items() if n}
        assert sum(per_partition.values()) < expected.total  # the killed batch is not there

        [successor] = pool.start(1)
        await assert_ledger_holds("inside DB transaction", engine, settings, expected, 1000)
        assert successor.stop() == 0


# --- 4. a zombie: frozen past its session, woken after another took over ----------------------


async def test_a_frozen_worker_woken_after_a_takeover_is_fenced(
    endpoints: Endpoints,
    database_url: str,
    engine: AsyncEngine,
    run_id: str,
    tmp_path: Path,
    pools: Callable[[Settings], WorkerPool],
) -> None:
    async with fresh_scenario(
        endpoints, database_url, max_records=50, idle_in_transaction_timeout_s=10
    ) as settings:
        pool = pools(settings)
        [zombie] = pool.start(
            1,
            ORDERS_FAULT_POINT="before_db_transaction",
            ORDERS_FAULT_SIGNAL="SIGSTOP",
            ORDERS_FAULT_AFTER_BATCHES="4",
        )
        expected = Expectations()
        async with watching_positions(engine, settings) as watch, api_client(settings) as client:
            load = asyncio.create_task(
                place_orders(
                    client, expected, customers_for(run_id, 60), per_customer=40, concurrency=10
                )
            )
            frozen = psutil.Process(zombie.pid)
            for _ in range(300):
                if frozen.status() == psutil.STATUS_STOPPED:
                    break
                await asyncio.sleep(0.1)
            assert frozen.status() == psutil.STATUS_STOPPED
            frozen_positions = await stored_positions(
                engine, settings.worker.group_id, settings.kafka.orders_topic
            )
            [successor] = pool.start(1)
            await load
            # The successor takes the frozen member's partitions and moves them on.
            assert await wait_until_stored(engine, expected, timeout=120) == expected.total
            moved = await stored_positions(
                engine, settings.worker.group_id, settings.kafka.orders_topic
            )
            assert any(moved[p] > offset for p, offset in frozen_positions.items())

            zombie.signal(signal.SIGCONT)  # its held batch now tries to write, late
            assert await asyncio.to_thread(zombie.wait_for_output, "fenced", 30)
            await assert_ledger_holds("zombie", engine, settings, expected, 2400)
        assert zombie.stop() == 0
        assert successor.stop() == 0
        assert watch.regressions == []


# --- 5. rebalance storm -----------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.timeout(900)
async def test_a_rebalance_storm_1_to_4_to_1_workers(
    endpoints: Endpoints,
    database_url: str,
    engine: AsyncEngine,
    run_id: str,
    tmp_path: Path,
    pools: Callable[[Settings], WorkerPool],
) -> None:
    async with fresh_scenario(endpoints, database_url, max_records=200) as settings:
        pool = pools(settings)
        pool.start(1)
        expected = Expectations()
        async with watching_positions(engine, settings) as watch, api_client(settings) as client:
            load = asyncio.create_task(
                place_orders(
                    client, expected, customers_for(run_id, 100), per_customer=60, concurrency=20
                )
            )
            for _ in range(3):
                await asyncio.sleep(1.0)
                pool.start(1)  # 1 -> 4
            for _ in range(3):
                await asyncio.sleep(1.0)
                assert pool.stop(1) == [0]  # 4 -> 1, each one drained gracefully
            await load
            await assert_ledger_holds("rebalance storm", engine, settings, expected, 6000)
        assert pool.stop_all() == [0]
        assert watch.regressions == []
        assert pool.outputs().count("partitions revoked") >= 6


# --- 6. and 7. three brokers ------------------------------------------------------------------


async def leader_of_busiest_partition(settings: Settings) -> int:
    ends = await end_offsets(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
    busiest = max(ends, key=lambda partition: ends[partition])
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        [topic] = await admin.describe_topics([settings.kafka.orders_topic])
    finally:
        await admin.close()
    [partition] = [p for p in topic["partitions"] if p["partition"] == busiest]
    return int(partition["leader"])


@contextlib.asynccontextmanager
async def three_brokers(
    home: Path, base_port: int, endpoints: Endpoints, database_url: str
) -> AsyncIterator[tuple[ThrowawayCluster, Settings]]:
    """A real 3-broker cluster of the test's own; topics with RF 3 and min.insync.replicas 2."""
    with throwaway_cluster(home, base_port=base_port, brokers=3) as cluster:
        where = Endpoints(cluster.bootstrap, endpoints.database_url, "3 brokers")
        settings = make_settings(where, database_url, **FAST_GROUP)
        kafka = settings.kafka.model_copy(
            update={"replication_factor": 3, "min_insync_replicas": 2}
        )
        settings = settings.model_copy(update={"kafka": kafka})
        await ensure_topics(settings.kafka)
        yield cluster, settings


@pytest.mark.chaos
@pytest.mark.timeout(900)
async def test_killing_the_busiest_leader_five_times_loses_no_acknowledged_order(
    endpoints: Endpoints,
    database_url: str,
    engine: AsyncEngine,
    run_id: str,
    tmp_path: Path,
    pools: Callable[[Settings], WorkerPool],
) -> None:
    async with three_brokers(tmp_path / "kafka", 19292, endpoints, database_url) as (
        cluster,
        settings,
    ):
        pool = pools(settings)
        pool.start(2)
        expected = Expectations()
        async with api_client(settings) as client:
            load = asyncio.create_task(
                place_orders(
                    client,
                    expected,
                    customers_for(run_id, 100),
                    per_customer=50,
                    retry_unavailable=True,
                )
            )
            for _ in range(5):
                await asyncio.sleep(2.0)
                leader = await leader_of_busiest_partition(settings)
                cluster.kill(leader)
                await asyncio.sleep(2.0)
                await asyncio.to_thread(cluster.start)
            await asyncio.wait_for(load, 300)
            await assert_ledger_holds("leader kill x5", engine, settings, expected, 5000)
        pool.stop_all()


@pytest.mark.chaos
@pytest.mark.timeout(900)
async def test_two_of_three_brokers_down_means_503_never_202(
    endpoints: Endpoints,
    database_url: str,
    engine: AsyncEngine,
    run_id: str,
    tmp_path: Path,
    pools: Callable[[Settings], WorkerPool],
) -> None:
    async with three_brokers(tmp_path / "kafka", 19392, endpoints, database_url) as (
        cluster,
        settings,
    ):
        pool = pools(settings)
        pool.start(1)
        expected = Expectations()
        customers = customers_for(run_id, 30)
        async with api_client(settings) as client:
            await place_orders(client, expected, customers, per_customer=10)
            assert expected.total == 300

            cluster.stop(2)
            cluster.stop(3)
            outage = Expectations()
            await place_orders(client, outage, customers_for(f"{run_id}-down", 20), per_customer=2)
            assert outage.total == 0  # every answer was a 503
            assert len(outage.refused) == 40

            await asyncio.to_thread(cluster.start)
            await place_orders(client, expected, customers, per_customer=20, retry_unavailable=True)
        await assert_ledger_holds("two brokers down", engine, settings, expected, 640)
        # Refused means refused: none of the orders answered 503 was stored later on (their
        # customers got nothing but 503s, so none of their orders may be stored).
        refused_customers = {customer for customer, _ in outage.refused}
        async with engine.connect() as connection:
            leaked = await connection.scalar(
                select(func.count())
                .select_from(orders)
                .where(orders.c.customer_id.in_(refused_customers))
            )
        assert leaked == 0, f"{leaked} refused orders were stored"
        # They did reach the log once the brokers were back (aiokafka never expires them); the
        # worker saw they were appended after their acceptance deadline and skipped them.
        assert "after its acceptance deadline" in pool.outputs()
        pool.stop_all()


# --- 8. the only broker killed with requests in flight ----------------------------------------


async def test_broker_killed_mid_flight_clients_retrying_end_with_one_order_each(
    endpoints: Endpoints,
    database_url: str,
    engine: AsyncEngine,
    run_id: str,
    tmp_path: Path,
    pools: Callable[[Settings], WorkerPool],
) -> None:
    with throwaway_cluster(tmp_path / "kafka", base_port=19492) as broker:
        where = Endpoints(broker.bootstrap, endpoints.database_url, "1 broker")
        settings = make_settings(where, database_url, **FAST_GROUP)
        await ensure_topics(settings.kafka)
        pool = pools(settings)
        pool.start(1)
        expected = Expectations()
        unavailable = 0
        async with api_client(settings) as client:
            original_post = client.post

            async def counting_post(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
                nonlocal unavailable
                response = await original_post(*args, **kwargs)  # type: ignore[arg-type]
                unavailable += response.status_code == 503
                return response

            client.post = counting_post  # type: ignore[method-assign]
            load = asyncio.create_task(
                place_orders(
                    client,
                    expected,
                    customers_for(run_id, 50),
                    per_customer=30,
                    retry_unavailable=True,
                )
            )
            await asyncio.sleep(1.0)
            assert not load.done()
            broker.kill()
            # Down for longer than the acceptance deadline plus grace: in-flight requests get 503.
            await asyncio.sleep(settings.api.ack_deadline_s + settings.api.ack_grace_s + 1)
            await asyncio.to_thread(broker.start)
            await asyncio.wait_for(load, 240)
        assert unavailable > 0  # requests in flight were answered 503, and retried
        await assert_ledger_holds("broker killed in flight", engine, settings, expected, 1500)
        pool.stop_all()


# --- 9. PostgreSQL stopped for 30 s during load -----------------------------------------------


@pytest.mark.chaos
@pytest.mark.timeout(900)
async def test_postgres_down_for_30s_under_load(
    endpoints: Endpoints,
    run_id: str,
    tmp_path: Path,
    pools: Callable[[Settings], WorkerPool],
) -> None:
    with throwaway_postgres(port=OUTAGE_POSTGRES_PORT + 1) as database:
        settings = make_settings(endpoints, database.url, retry_backoff_max_s=2.0, **FAST_GROUP)
        await asyncio.to_thread(upgrade_database, database.settings)
        await ensure_topics(settings.kafka)
        engine = create_engine(DatabaseSettings(url=database.url))  # type: ignore[arg-type]
        pool = pools(settings)
        pool.start(2)
        expected = Expectations()
        customers = customers_for(run_id, 50)
        async with api_client(settings) as client:
            await place_orders(client, expected, customers, per_customer=10)
            assert await wait_until_stored(engine, expected) == 500
            await engine.dispose()
            database.stop()
            before = await committed_offsets(settings)
            accepted_before = expected.total
            # Without an Idempotency-Key: a keyed order needs PostgreSQL (503 while it is down).
            load = asyncio.create_task(
                place_orders(client, expected, customers, per_customer=50, keyed=False)
            )
            await asyncio.sleep(30)
            assert expected.total > accepted_before  # Kafka holds what the API keeps accepting
            assert await committed_offsets(settings) == before  # no position moved
            database.start()
            await load
        await assert_ledger_holds("postgres down 30s", engine, settings, expected, 3000)
        assert pool.stop_all() == [0, 0]
        await engine.dispose()


# --- 10. poison mixed into the stream ---------------------------------------------------------


async def test_poison_mixed_into_the_stream_blocks_no_partition(
    endpoints: Endpoints,
    database_url: str,
    engine: AsyncEngine,
    run_id: str,
    tmp_path: Path,
    pools: Callable[[Settings], WorkerPool],
) -> None:
    async with fresh_scenario(endpoints, database_url) as settings:
        pool = pools(settings)
        pool.start(2)
        expected = Expectations()
        customers = customers_for(run_id, 60)
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap_servers, enable_idempotence=True
        )
        await producer.start()
        poison: list[bytes] = []
        try:
            async with api_client(settings) as client:
                load = asyncio.create_task(
                    place_orders(client, expected, customers, per_customer=30)
                )
                while not load.done():
                    bad = (
                        random.choice(
                            [
                                b"\x00\x01 not json",
                                json.dumps({"schema_version": 7}).encode(),
                                json.dumps(
                                    {"schema_version": 1, "order_id": str(uuid.uuid4())}
                                ).encode(),
                            ]
                        )
                        + f" #{len(poison)}".encode()
                    )
                    await producer.send_and_wait(
                        settings.kafka.orders_topic, bad, key=random.choice(customers).encode()
                    )
                    poison.append(bad)
                    await asyncio.sleep(0.05)
                await load
        finally:
            await producer.stop()
        await assert_ledger_holds("poison mixed in", engine, settings, expected, 1800)
        dead = await read_topic(settings.kafka.bootstrap_servers, settings.kafka.dlq_topic)
        assert sorted(record.value for record in dead) == sorted(poison)
        assert pool.stop_all() == [0, 0]

"""PostgreSQL goes away mid-stream: nothing advances while it is down, all catches up after."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.db.engine import create_engine
from app.db.migrate import upgrade_database
from app.settings import DatabaseSettings
from app.topics import ensure_topics
from tests.integration.api_client import api_client, order_body
from tests.integration.conftest import make_settings
from tests.integration.endpoints import Endpoints
from tests.integration.kafka_tools import end_offsets, non_empty
from tests.integration.load import customers_for, place_orders
from tests.integration.oracle import Expectations, check_ledger, stored_positions, wait_until_stored
from tests.integration.processes import OrdersProcess
from tests.integration.throwaway import throwaway_postgres
from tests.integration.worker_harness import committed_offsets


async def test_a_database_outage_pauses_progress_and_everything_catches_up(
    endpoints: Endpoints, run_id: str, tmp_path: Path
) -> None:
    with throwaway_postgres() as database:
        settings = make_settings(endpoints, database.url, retry_backoff_max_s=1.0)
        await asyncio.to_thread(upgrade_database, database.settings)
        await ensure_topics(settings.kafka)
        engine = create_engine(DatabaseSettings(url=database.url))  # type: ignore[arg-type]
        worker = OrdersProcess("worker", settings, tmp_path)
        expected = Expectations()
        customers = customers_for(run_id, 20)
        try:
            async with api_client(settings) as client:
                await place_orders(client, expected, customers, per_customer=20)
                assert await wait_until_stored(engine, expected) == 400
                await engine.dispose()

                database.stop()
                committed_before = await committed_offsets(settings)
                # The API keeps accepting orders without an Idempotency-Key (they never touch
                # PostgreSQL): Kafka holds them while the database is away. A keyed order
                # needs the database to check its key, and is refused meanwhile.
                keyed = await client.post(
                    "/orders", json=order_body(customers[0]), headers={"Idempotency-Key": "k"}
                )
                assert keyed.status_code == 503
                await place_orders(client, expected, customers, per_customer=20, keyed=False)
                assert expected.total == 20 * 40
                await asyncio.sleep(3.0)  # several retry rounds of the worker
                assert await committed_offsets(settings) == committed_before
                assert worker.alive()

                database.start()
                assert await wait_until_stored(engine, expected, timeout=90) == 800
        finally:
            code = worker.stop()
        assert code == 0
        assert "retrying from its start" in worker.output()
        report = await check_ledger(engine, expected)
        assert report.holds, str(report)
        ends = await end_offsets(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
        group, topic = settings.worker.group_id, settings.kafka.orders_topic
        assert await stored_positions(engine, group, topic) == non_empty(ends)
        await engine.dispose()

"""`make chaos`: the payments ledger under a longer kill -9 loop of two `orders payments` members,
through a gateway failing 20% of calls and leaving 5% unanswered after charging: the same
assertions as tests/integration/test_payments.py (charged once, in each customer's order; one
visible event per order; an audit trail that accounts for every call)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.topics import ensure_topics
from tests.integration.endpoints import Endpoints
from tests.integration.processes import OrdersProcess
from tests.integration.test_payments import (
    check_exactly_once,
    gateway_process,
    kill_loop,
    payments_settings,
    place_orders,
    wait_until_all_committed,
)

pytestmark = pytest.mark.chaos


async def test_payments_ledger_through_a_long_kill_9_loop(
    endpoints: Endpoints, database_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    with gateway_process(tmp_path, latency_ms=50, error_rate=0.2, timeout_rate=0.05) as url:
        settings = payments_settings(endpoints, database_url, url)
        await ensure_topics(settings.kafka, settings.payments.topic)
        per_customer, request_ids = await place_orders(settings, count=3000, customers=300)
        members = [OrdersProcess("payments", settings, tmp_path) for _ in range(2)]
        try:
            kills = await kill_loop(settings, tmp_path, members, 60, random.Random(1414))
            await wait_until_all_committed(settings, timeout_s=120)
            for member in members:
                assert member.stop() == 0, member.output()[-3000:]
        finally:
            for member in members:
                if member.alive():
                    member.kill()
        assert kills >= 15
        result = await check_exactly_once(settings, engine, url, per_customer, request_ids)
        assert result["books"]["replays"] > 0

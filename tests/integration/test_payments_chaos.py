"""`make chaos`: the payments ledger under a longer kill -9 loop of two `orders payments` members,
through a gateway failing 20% of calls and leaving 5% unanswered after charging: the same
assertions as tests/integration/test_payments.py (charged once, in each customer's order; one
visible event per order; an audit trail that accounts for every call)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.endpoints import Endpoints
from tests.integration.test_payments import ledger_under_a_kill_loop

pytestmark = pytest.mark.chaos


async def test_payments_ledger_through_a_long_kill_9_loop(
    endpoints: Endpoints, database_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    kills, result = await ledger_under_a_kill_loop(
        endpoints,
        database_url,
        engine,
        tmp_path,
        latency_ms=50,
        orders=3000,
        customers=300,
        loop_s=60,
        seed=1414,
        drain_s=120,
    )
    assert kills >= 15
    assert result["books"]["replays"] > 0

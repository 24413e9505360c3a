"""What an analytics member reports of late orders, without services: a late order is counted
(a correction), counted apart, and logged as a warning that names the likely cause, a clock
skew between this host and the brokers beyond ANALYTICS_GRACE_S."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from app.analytics import exact
from app.analytics.batch import CountedBatch
from app.analytics.member import AnalyticsMember
from app.db.positions import PartitionSpan
from app.settings import AnalyticsSettings, Settings


async def test_late_orders_are_counted_apart_and_warned_about_with_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine: Any = None  # never used: nothing is stored here
    settings = Settings(analytics=AnalyticsSettings(grace_s=7))
    member = AnalyticsMember(settings, engine, exact, name="m-test")  # never started
    try:
        count_late_orders(member, caplog)
    finally:
        await member.close()


def count_late_orders(member: AnalyticsMember, caplog: pytest.LogCaptureFixture) -> None:
    batch = CountedBatch(spans=[PartitionSpan(0, 0, 3)], sales={}, progress={})
    caplog.set_level(logging.INFO, logger="app.analytics.member")
    member._count(batch, CountedBatch(spans=batch.spans, sales={}, progress={}, late=0))
    assert not caplog.records
    for late in (2, 3):
        member._count(batch, CountedBatch(spans=batch.spans, sales={}, progress={}, late=late))

    assert member.stats.late == 5
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "ANALYTICS_GRACE_S (7s)" in warnings[-1].getMessage()
    assert "(5 so far)" in warnings[-1].getMessage()

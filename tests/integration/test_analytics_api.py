"""GET /analytics/revenue against the real app and PostgreSQL: who may read it (401, 403),
what it refuses (422, problem+json), and the closed windows it serves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import READ, WRITE
from app.settings import AnalyticsSettings, Settings
from tests.integration.api_client import api_client, token_for
from tests.integration.conftest import make_settings
from tests.integration.endpoints import Endpoints

PROBLEM_JSON = "application/problem+json"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
# Windows of T0 and T0 + 1 min are closed (the watermark minus the 10 s grace is T0 + 2 min);
# the one of T0 + 2 min is still open.
WATERMARK = T0 + 2 * MINUTE + timedelta(seconds=10)
SPAN = {"from": T0.isoformat(), "to": (T0 + timedelta(hours=1)).isoformat()}


@pytest.fixture
async def analytics_settings(
    endpoints: Endpoints, database_url: str, engine: AsyncEngine, run_id: str
) -> Settings:
    """A group of its own, with three windows and a watermark stored as the members store them."""
    settings = make_settings(endpoints, database_url)
    settings = settings.model_copy(
        update={"analytics": AnalyticsSettings(group_id=f"analytics-api-{run_id}", grace_s=10)}
    )
    group, topic = settings.analytics.group_id, settings.kafka.orders_topic
    windows = [
        (T0, "EUR", 3, Decimal("12.50"), 0),
        (T0, "USD", 1, Decimal("0.10"), 0),
        (T0 + MINUTE, "EUR", 2, Decimal("7.00"), 1),
        (T0 + 2 * MINUTE, "EUR", 5, Decimal("99.00"), 0),  # open: not served
    ]
    async with engine.begin() as connection:
        for start, currency, orders, revenue, late in windows:
            await connection.execute(
                text(
                    "INSERT INTO revenue_windows (group_id, window_start, window_end, currency,"
                    " orders, revenue, late_orders) VALUES (:g, :s, :e, :c, :o, :r, :l)"
                ),
                {"g": group, "s": start, "e": start + MINUTE, "c": currency, "o": orders}
                | {"r": revenue, "l": late},
            )
        for partition in range(settings.kafka.partitions):
            until = WATERMARK + timedelta(seconds=partition)  # partition 0 is the slowest
            await connection.execute(
                text(
                    "INSERT INTO analytics_watermarks (group_id, topic, partition, appended_until)"
                    " VALUES (:g, :t, :p, :u)"
                ),
                {"g": group, "t": topic, "p": partition, "u": until},
            )
    return settings


async def get_revenue(settings: Settings, token: str | None, **params: str) -> Any:
    async with api_client(settings, authenticated=token is not None, token=token) as client:
        return await client.get("/analytics/revenue", params=params)


async def test_a_service_reads_the_closed_windows_with_decimal_strings(
    analytics_settings: Settings,
) -> None:
    response = await get_revenue(analytics_settings, token_for(analytics_settings), **SPAN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert datetime.fromisoformat(body["closed_through"]) == WATERMARK - timedelta(seconds=10)
    assert body["next"] is None
    assert [
        (datetime.fromisoformat(w["window_start"]), w["currency"], w["orders"], w["revenue"])
        for w in body["windows"]
    ] == [
        (T0, "EUR", 3, "12.50"),
        (T0, "USD", 1, "0.10"),
        (T0 + MINUTE, "EUR", 2, "7.00"),
    ]
    assert body["windows"][2]["late_orders"] == 1
    assert datetime.fromisoformat(body["windows"][0]["window_end"]) == T0 + MINUTE


async def test_one_currency_and_pages_of_whole_windows(analytics_settings: Settings) -> None:
    token = token_for(analytics_settings)
    usd = await get_revenue(analytics_settings, token, **SPAN, currency="USD")
    assert [w["currency"] for w in usd.json()["windows"]] == ["USD"]
    # [from, to): a window starting at `to` is not in it.
    first_only = await get_revenue(
        analytics_settings, token, **{"from": SPAN["from"], "to": (T0 + MINUTE).isoformat()}
    )
    assert {w["window_start"] for w in first_only.json()["windows"]} == {
        w["window_start"] for w in usd.json()["windows"]
    }
    page = (await get_revenue(analytics_settings, token, **SPAN, limit="1")).json()
    assert [w["currency"] for w in page["windows"]] == ["EUR", "USD"]  # a window whole
    assert datetime.fromisoformat(page["next"]) == T0 + MINUTE
    rest = await get_revenue(
        analytics_settings, token, **{"from": page["next"], "to": SPAN["to"]}, limit="1"
    )
    assert [w["orders"] for w in rest.json()["windows"]] == [2]
    assert rest.json()["next"] is None


async def test_nothing_is_closed_while_a_partition_is_unknown(
    analytics_settings: Settings, engine: AsyncEngine
) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE analytics_watermarks SET appended_until = NULL"
                " WHERE group_id = :g AND partition = 3"
            ),
            {"g": analytics_settings.analytics.group_id},
        )
    body = (await get_revenue(analytics_settings, token_for(analytics_settings), **SPAN)).json()
    assert body == {"windows": [], "closed_through": None, "next": None}


async def test_without_a_token_401(analytics_settings: Settings) -> None:
    response = await get_revenue(analytics_settings, None, **SPAN)
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_token_without_orders_read_403(analytics_settings: Settings) -> None:
    response = await get_revenue(
        analytics_settings, token_for(analytics_settings, scopes=(WRITE,)), **SPAN
    )
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


@pytest.mark.parametrize("params", [SPAN, {"from": "not a date"}])
async def test_a_customers_token_403_even_with_bad_parameters(
    analytics_settings: Settings, params: dict[str, str]
) -> None:
    # Revenue sums every customer's orders: a token acting for one customer may not read it.
    token = token_for(analytics_settings, "alice", scopes=(READ,), customer="alice")
    response = await get_revenue(analytics_settings, token, **params)
    assert response.status_code == 403
    assert response.headers["content-type"] == PROBLEM_JSON
    assert "aggregate" in response.json()["detail"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"to": SPAN["to"]}, "from"),  # missing
        ({"from": "2026-03-01T12:00:00", "to": SPAN["to"]}, "from"),  # no offset
        ({"from": "yesterday", "to": SPAN["to"]}, "from"),
        ({"from": SPAN["from"], "to": SPAN["from"]}, "to"),  # empty: to must be after from
        ({"from": SPAN["from"], "to": (T0 + timedelta(days=31, seconds=1)).isoformat()}, "to"),
        ({**SPAN, "currency": "ZZZ"}, "currency"),  # three letters, not ISO 4217
        ({**SPAN, "currency": "eur"}, "currency"),
        ({**SPAN, "limit": "0"}, "limit"),
    ],
)
async def test_invalid_parameters_422(
    analytics_settings: Settings, params: dict[str, str], field: str
) -> None:
    response = await get_revenue(analytics_settings, token_for(analytics_settings), **params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert [error["loc"] for error in response.json()["errors"]] == [["query", field]]


async def test_thirty_one_days_exactly_is_allowed(analytics_settings: Settings) -> None:
    response = await get_revenue(
        analytics_settings,
        token_for(analytics_settings),
        **{"from": SPAN["from"], "to": (T0 + timedelta(days=31)).isoformat()},
    )
    assert response.status_code == 200
    assert len(response.json()["windows"]) == 3


def test_the_route_is_documented(analytics_settings: Settings) -> None:
    from app.api import create_app

    operation = create_app(analytics_settings).openapi()["paths"]["/analytics/revenue"]["get"]
    assert operation["security"] == [{"bearerAuth": [READ]}]
    assert {p["name"] for p in operation["parameters"]} == {"from", "to", "currency", "limit"}
    assert {"200", "401", "403", "422"} <= set(operation["responses"])

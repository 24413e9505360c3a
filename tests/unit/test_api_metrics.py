"""The API's metrics without services: route and status labels, 503 reasons, GET /metrics."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from uvicorn.config import Config
from uvicorn.server import ServerState

from app.api import create_app
from app.api.edge_guard import InFlightCap
from app.api.edge_protocol import EdgeProtocol
from app.api.edge_watch import ConnectionWatch
from app.api.metrics import (
    SCRAPE_CACHE_S,
    UNMATCHED,
    ProducerMetrics,
    RenderedRecently,
    count_edge_refusal,
    count_unavailable,
)
from app.api.problems import install_problem_handlers
from app.api.rate_limit import RateLimitedError
from app.api.request_metrics import RequestMetrics
from app.errors import BrokerUnavailableError
from app.settings import MetricsSettings, Settings
from tests.unit.test_edge_protocol import LIMITS, Echo, MemoryTransport, head, status_of

ORDER_ID = "0190a7c2-0000-7000-8000-000000000000"
JSON = {"content-type": "application/json"}

# The API's part of the metric contract: name, and the type its # TYPE line declares.
CONTRACT = {
    "orders_http_requests_total": "counter",
    "orders_http_request_duration_seconds": "histogram",
    "orders_http_requests_in_flight": "gauge",
    "orders_http_edge_refusals_total": "counter",
    "orders_http_unavailable_total": "counter",
    "orders_kafka_ack_seconds": "histogram",
    "orders_producer_records_total": "counter",
    "orders_producer_batch_records": "histogram",
    "orders_producer_errors_total": "counter",
    "orders_producer_replacements_total": "counter",
    "orders_producer_connected": "gauge",
}


def requests_counted(route: str, status: int) -> float:
    labels = {"route": route, "status": str(status)}
    return REGISTRY.get_sample_value("orders_http_requests_total", labels) or 0.0


def unavailable_counted(reason: str) -> float:
    return REGISTRY.get_sample_value("orders_http_unavailable_total", {"reason": reason}) or 0.0


def settings_with(**api: object) -> Settings:
    settings = Settings()
    return settings.model_copy(update={"api": settings.api.model_copy(update=api)})


async def client_of(app: FastAPI) -> httpx.AsyncClient:
    # raise_app_exceptions=False: a 500 reaches the client as uvicorn would send it.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://orders")


@pytest.fixture
async def real_app() -> AsyncIterator[httpx.AsyncClient]:
    """The API's own app (no lifespan: nothing connects), metrics on."""
    async with await client_of(create_app(settings_with(max_body_bytes=1024))) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "route", "status"),
    [
        ("GET", "/healthz", {}, b"", "/healthz", 200),
        ("GET", "/no/such/path", {}, b"", UNMATCHED, 404),
        ("GET", "/orders/not-an-order-id", {}, b"", UNMATCHED, 404),  # the converter refuses it
        ("PUT", "/orders", {}, b"", "/orders", 405),
        # Refused by the guard before routing: the route they would have matched.
        ("POST", "/orders", {"content-type": "text/plain"}, b"{}", "/orders", 415),
        ("POST", "/orders/validate", JSON, b"x" * 2000, "/orders/validate", 413),
    ],
)
async def test_each_answer_is_counted_under_its_route_template_and_status(
    real_app: httpx.AsyncClient,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    route: str,
    status: int,
) -> None:
    before = requests_counted(route, status)
    answer = await real_app.request(method, path, headers=headers, content=body)
    assert answer.status_code == status
    assert requests_counted(route, status) == before + 1


async def test_a_route_with_a_converter_is_labelled_by_its_template(
    real_app: httpx.AsyncClient,
) -> None:
    """Not the raw path, not the converter's name: "/orders/{order_id}". (Without the lifespan
    the route fails, a 500: counted like any answer, under its route.)"""
    before = requests_counted("/orders/{order_id}", 500)
    assert (await real_app.get(f"/orders/{ORDER_ID}")).status_code == 500
    assert requests_counted("/orders/{order_id}", 500) == before + 1
    text = (await real_app.get("/metrics")).text
    assert ORDER_ID not in text
    assert "order_id:" not in text


async def held_app() -> tuple[FastAPI, asyncio.Event, asyncio.Event]:
    """A small app laid out as create_app lays out its own: the cap inside the metrics.
    GET /held sets the first event and waits for the second."""
    app = FastAPI()
    entered, release = asyncio.Event(), asyncio.Event()

    @app.get("/held")
    async def held() -> dict[str, str]:
        entered.set()
        await release.wait()
        return {}

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.get("/limited")
    async def limited() -> None:
        raise RateLimitedError(3, {"Retry-After": "3"})

    @app.get("/unacknowledged")
    async def unacknowledged() -> None:
        raise BrokerUnavailableError("no acknowledgement", "ack_timeout")

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("a bug")

    app.add_middleware(
        InFlightCap, max_in_flight=1, retry_after_s=1, count_unavailable=count_unavailable
    )
    app.add_middleware(RequestMetrics)
    install_problem_handlers(app, retry_after_s=1, count_unavailable=count_unavailable)
    return app, entered, release


async def test_the_in_flight_cap_503_is_counted_with_its_route_and_reason() -> None:
    app, entered, release = await held_app()
    async with await client_of(app) as client:
        holding = asyncio.create_task(client.get("/held"))
        await entered.wait()
        assert REGISTRY.get_sample_value("orders_http_requests_in_flight") == 1
        before = requests_counted("/items/{item_id}", 503), unavailable_counted("overloaded")
        assert (await client.get("/items/7")).status_code == 503
        after = requests_counted("/items/{item_id}", 503), unavailable_counted("overloaded")
        assert after == (before[0] + 1, before[1] + 1)
        release.set()
        assert (await holding).status_code == 200
    assert REGISTRY.get_sample_value("orders_http_requests_in_flight") == 0


@pytest.mark.parametrize(
    ("path", "route", "status"),
    [
        ("/limited", "/limited", 429),
        ("/broken", "/broken", 500),
        ("/items/x", "/items/{item_id}", 422),
    ],
)
async def test_answers_of_the_handlers_are_counted(path: str, route: str, status: int) -> None:
    app, _, _ = await held_app()
    before = requests_counted(route, status)
    async with await client_of(app) as client:
        assert (await client.get(path)).status_code == status
    assert requests_counted(route, status) == before + 1


async def test_a_broker_503_is_counted_by_its_reason() -> None:
    app, _, _ = await held_app()
    before = requests_counted("/unacknowledged", 503), unavailable_counted("ack_timeout")
    async with await client_of(app) as client:
        assert (await client.get("/unacknowledged")).status_code == 503
    after = requests_counted("/unacknowledged", 503), unavailable_counted("ack_timeout")
    assert after == (before[0] + 1, before[1] + 1)


async def test_the_duration_is_observed_under_the_route(real_app: httpx.AsyncClient) -> None:
    labels = {"route": "/healthz"}
    before = REGISTRY.get_sample_value("orders_http_request_duration_seconds_count", labels) or 0
    await real_app.get("/healthz")
    after = REGISTRY.get_sample_value("orders_http_request_duration_seconds_count", labels)
    assert after == before + 1


def type_lines(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


async def test_every_metric_of_the_contract_is_exposed_after_one_request(
    real_app: httpx.AsyncClient,
) -> None:
    await real_app.get("/healthz")
    scrape = await real_app.get("/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    declared = type_lines(scrape.text)
    assert {name: declared.get(name) for name in CONTRACT} == CONTRACT
    assert re.search(
        r'^orders_http_requests_total\{route="/healthz",status="200"\} [1-9]', scrape.text, re.M
    )
    # The fixed reason sets exist from the start, at 0.
    assert 'orders_http_unavailable_total{reason="overloaded"}' in scrape.text
    assert 'orders_http_edge_refusals_total{reason="header_too_large"}' in scrape.text


async def test_metrics_off_means_no_middleware_no_counts_and_no_metrics_route() -> None:
    settings = Settings().model_copy(update={"metrics": MetricsSettings(enabled=False)})
    app = create_app(settings)
    assert RequestMetrics not in [middleware.cls for middleware in app.user_middleware]
    before = requests_counted("/healthz", 200)
    async with await client_of(app) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 404
    assert requests_counted("/healthz", 200) == before


def test_producer_metrics_resolve_each_partition_once() -> None:
    producer = ProducerMetrics("metrics-unit")
    labels = {"topic": "metrics-unit", "partition": "3"}
    producer.acknowledged(3, 40)
    producer.acknowledged(3, 2)
    assert REGISTRY.get_sample_value("orders_producer_records_total", labels) == 42
    before = REGISTRY.get_sample_value("orders_producer_errors_total", {"error": "TimeoutError"})
    producer.failed(TimeoutError())
    after = REGISTRY.get_sample_value("orders_producer_errors_total", {"error": "TimeoutError"})
    assert after == (before or 0) + 1


def test_edge_refusals_are_counted_by_slug() -> None:
    labels = {"reason": "head_timeout"}
    before = REGISTRY.get_sample_value("orders_http_edge_refusals_total", labels) or 0
    count_edge_refusal("head_timeout")
    assert REGISTRY.get_sample_value("orders_http_edge_refusals_total", labels) == before + 1


async def test_the_edge_tells_each_refusal_by_its_slug() -> None:
    counted: list[str] = []
    watch = ConnectionWatch(LIMITS, counted.append)
    config = Config(Echo(), lifespan="off", ws="none")
    protocol = EdgeProtocol(
        config, ServerState(), {}, asyncio.get_running_loop(), limits=LIMITS, watch=watch
    )
    transport = MemoryTransport()
    protocol.connection_made(transport)
    try:
        protocol.data_received(head(LIMITS.max_header_bytes + 1))
        assert status_of(transport.written) == 431
        assert counted == ["header_too_large"]
    finally:
        if watch._timer is not None:
            watch._timer.cancel()
        protocol.connection_lost(None)


def test_one_rendering_answers_the_scrapes_of_the_next_second() -> None:
    """A flood of scrapes of the open /metrics costs one rendering a second, not one each."""
    now = [100.0]
    renders: list[float] = []

    def render() -> bytes:
        renders.append(now[0])
        return f"rendered at {now[0]}".encode()

    rendered = RenderedRecently(render, clock=lambda: now[0])
    bodies = [rendered.body() for _ in range(1000)]
    assert renders == [100.0]
    assert set(bodies) == {b"rendered at 100.0"}
    now[0] += SCRAPE_CACHE_S - 0.01
    assert rendered.body() == b"rendered at 100.0"
    now[0] += 0.01
    assert rendered.body() == b"rendered at " + str(now[0]).encode()
    assert len(renders) == 2

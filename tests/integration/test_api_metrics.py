"""The API's /metrics against the real broker: the counters match what was placed, and every
503 is counted under its reason."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable
from typing import Any

import httpx
from aiokafka.errors import OutOfOrderSequenceNumber
from prometheus_client.parser import text_string_to_metric_families

from app.api.metrics import SCRAPE_CACHE_S
from app.settings import Settings
from tests.integration.api_client import api_client, order_body, publisher_behind

Labels = frozenset[tuple[str, str]]


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, Labels], float]:
    """Every sample of GET /metrics, by name and labels (a fresh rendering: one answers the
    scrapes of the following SCRAPE_CACHE_S)."""
    await asyncio.sleep(SCRAPE_CACHE_S)
    answer = await client.get("/metrics")
    assert answer.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, Labels], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict[tuple[str, Labels], float], name: str, **labels: str) -> float:
    """The sum over the series of `name` that carry `labels` (and any others)."""
    wanted = set(labels.items())
    return sum(v for (n, series), v in samples.items() if n == name and wanted <= series)


def grew(
    before: dict[tuple[str, Labels], float],
    after: dict[tuple[str, Labels], float],
    series: Iterable[tuple[str, dict[str, str]]],
) -> list[float]:
    return [value(after, n, **labels) - value(before, n, **labels) for n, labels in series]


async def test_the_counters_match_the_orders_placed(settings: Settings) -> None:
    placed = 60
    topic = settings.kafka.orders_topic
    async with api_client(settings) as client:
        before = await scrape(client)
        answers = await asyncio.gather(
            *(client.post("/orders", json=order_body(f"c-{n % 13}", n)) for n in range(placed))
        )
        assert [a.status_code for a in answers] == [202] * placed
        after = await scrape(client)

    accepted = [
        ("orders_http_requests_total", {"route": "/orders", "status": "202"}),
        ("orders_http_request_duration_seconds_count", {"route": "/orders"}),
        ("orders_kafka_ack_seconds_count", {}),
        ("orders_producer_batch_records_sum", {}),  # every record was in a batch handed over
    ]
    assert grew(before, after, accepted) == [placed] * len(accepted)
    # The topic is this test's own: its series began at 0.
    assert total(after, "orders_producer_records_total", topic=topic) == placed
    partitions = {str(a.json()["partition"]) for a in answers}
    counted = {
        dict(series)["partition"]
        for (name, series), v in after.items()
        if name == "orders_producer_records_total" and dict(series)["topic"] == topic and v
    }
    assert counted == partitions
    assert value(after, "orders_producer_connected") == 1
    assert value(after, "orders_http_requests_in_flight") == 1  # the scrape itself


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # nothing listens on it any more


def changed(settings: Settings, **groups: dict[str, Any]) -> Settings:
    return settings.model_copy(
        update={
            name: getattr(settings, name).model_copy(update=fields)
            for name, fields in groups.items()
        }
    )


async def test_with_the_broker_unreachable_the_503s_are_counted_as_not_connected(
    settings: Settings,
) -> None:
    unreachable = changed(
        settings,
        kafka={"bootstrap_servers": f"127.0.0.1:{closed_port()}"},
        api={"ack_deadline_s": 0.5},
    )
    refused = 4
    async with api_client(unreachable) as client:
        before = await scrape(client)
        for n in range(refused):
            answer = await client.post("/orders", json=order_body("c-down", n))
            assert answer.status_code == 503
        after = await scrape(client)
    series = [
        ("orders_http_unavailable_total", {"reason": "broker_not_connected"}),
        ("orders_http_requests_total", {"route": "/orders", "status": "503"}),
    ]
    assert grew(before, after, series) == [refused, refused]
    assert value(after, "orders_producer_connected") == 0
    assert grew(before, after, [("orders_kafka_ack_seconds_count", {})]) == [0]


async def test_a_fatal_producer_error_and_a_lost_acknowledgement_are_told_apart(
    settings: Settings,
) -> None:
    quick = changed(settings, api={"ack_deadline_s": 1.0, "ack_grace_s": 0.5})
    async with api_client(quick) as client:
        publisher = publisher_behind(client)
        before = await scrape(client)

        broken = publisher._producer
        assert broken is not None

        async def out_of_order(*args: Any, **kwargs: Any) -> Any:
            raise OutOfOrderSequenceNumber

        broken.send_batch = out_of_order
        assert (await client.post("/orders", json=order_body("c-f", 1))).status_code == 503
        for _ in range(100):
            if publisher._producer not in (None, broken):
                break
            await asyncio.sleep(0.1)
        assert publisher._producer not in (None, broken)

        async def never_acknowledged(*args: Any, **kwargs: Any) -> Any:
            await asyncio.Event().wait()

        publisher._producer.send_batch = never_acknowledged
        assert (await client.post("/orders", json=order_body("c-f", 2))).status_code == 503
        after = await scrape(client)

    series = [
        ("orders_http_unavailable_total", {"reason": "producer_fatal"}),
        ("orders_producer_errors_total", {"error": "OutOfOrderSequenceNumber"}),
        ("orders_producer_replacements_total", {}),
        ("orders_http_unavailable_total", {"reason": "ack_timeout"}),
        ("orders_producer_errors_total", {"error": "TimeoutError"}),
        ("orders_http_requests_total", {"route": "/orders", "status": "503"}),
    ]
    assert grew(before, after, series) == [1, 1, 1, 1, 1, 2]

"""POST /orders against the real broker: 202 only after acks=all, 4xx never produces."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from app import contract
from app.settings import Settings
from tests.integration.api_client import api_client, order_body, publisher_behind
from tests.integration.conftest import make_settings
from tests.integration.endpoints import Endpoints
from tests.integration.kafka_tools import end_offsets, read_topic
from tests.integration.throwaway import throwaway_cluster

JSON = {"content-type": "application/json"}

BAD_REQUESTS: list[tuple[str, dict[str, str], bytes, int]] = [
    ("not json", JSON, b"{nope", 400),
    ("missing items", JSON, json.dumps({"customer_id": "c", "currency": "EUR"}).encode(), 422),
    ("empty items", JSON, json.dumps(order_body("c", items=[])).encode(), 422),
    (
        "zero quantity",
        JSON,
        json.dumps(
            order_body("c", items=[{"sku": "a", "quantity": 0, "unit_price": "1"}])
        ).encode(),
        422,
    ),
    (
        "negative price",
        JSON,
        json.dumps(
            order_body("c", items=[{"sku": "a", "quantity": 1, "unit_price": "-0.01"}])
        ).encode(),
        422,
    ),
    ("unknown currency", JSON, json.dumps(order_body("c", currency="ABC")).encode(), 422),
    ("unknown field", JSON, json.dumps(order_body("c", coupon="FREE")).encode(), 422),
    ("bad customer id", JSON, json.dumps(order_body("a b")).encode(), 422),
    ("form body", {"content-type": "application/x-www-form-urlencoded"}, b"a=1", 415),
    ("no content type", {}, json.dumps(order_body("c")).encode(), 415),
    ("too large", JSON, json.dumps(order_body("c", pad="x" * 70_000)).encode(), 413),
]


async def test_every_bad_request_gets_a_clear_4xx_and_produces_nothing(settings: Settings) -> None:
    async with api_client(settings) as client:
        for case, headers, body, status in BAD_REQUESTS:
            response = await client.post("/orders", content=body, headers=headers)
            assert response.status_code == status, case
            assert response.headers["content-type"] == "application/problem+json", case
            assert response.json()["status"] == status, case
            if status == 422:
                assert response.json()["errors"], case
    topic = await end_offsets(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
    assert sum(topic.values()) == 0


async def test_an_oversized_streamed_body_is_refused_with_413(settings: Settings) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(100):
            yield b"x" * 1024

    async with api_client(settings) as client:
        response = await client.post("/orders", content=chunks(), headers=JSON)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_202_order_is_on_the_topic_with_its_key_partition_and_envelope(
    settings: Settings,
) -> None:
    body = order_body("cust-42", items=[{"sku": "A", "quantity": 3, "unit_price": "0.10"}])
    async with api_client(settings) as client:
        response = await client.post("/orders", json=body, headers={"X-Request-ID": "r-1"})
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["status"] == "accepted"
    assert response.headers["location"] == f"/orders/{accepted['order_id']}"

    [record] = await read_topic(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
    assert (record.partition, record.offset) == (accepted["partition"], accepted["offset"])
    assert record.key == b"cust-42"
    envelope = contract.decode(record.value)
    assert str(envelope.order_id) == accepted["order_id"]
    assert envelope.customer_id == "cust-42"
    assert str(envelope.total) == "0.30"
    assert envelope.currency == "EUR"
    assert dict(record.headers) == {
        "content-type": b"application/json",
        "schema-version": b"1",
        "request-id": b"r-1",
    }


async def test_a_customer_always_lands_on_one_partition(settings: Settings) -> None:
    customers = [f"customer-{n}" for n in range(50)]
    placed: dict[str, set[int]] = defaultdict(set)
    async with api_client(settings) as client:

        async def place(n: int) -> None:
            customer = customers[n % len(customers)]
            response = await client.post("/orders", json=order_body(customer, n))
            assert response.status_code == 202
            placed[customer].add(response.json()["partition"])

        for start in range(0, 1000, 100):
            await asyncio.gather(*(place(n) for n in range(start, start + 100)))

    assert all(len(partitions) == 1 for partitions in placed.values())
    assert len({p for partitions in placed.values() for p in partitions}) > 1  # spread out
    on_topic = await read_topic(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
    assert len(on_topic) == 1000
    for record in on_topic:
        assert {record.partition} == placed[record.key.decode()]


async def test_an_idempotency_key_retry_yields_the_same_order_id(settings: Settings) -> None:
    key = {"Idempotency-Key": f"retry-{uuid.uuid4()}"}
    async with api_client(settings) as client:
        first = await client.post("/orders", json=order_body("cust-7"), headers=key)
        again = await client.post("/orders", json=order_body("cust-7"), headers=key)
        fresh = await client.post("/orders", json=order_body("cust-7"))
    assert first.status_code == again.status_code == fresh.status_code == 202
    assert first.json()["order_id"] == again.json()["order_id"]
    assert fresh.json()["order_id"] != first.json()["order_id"]
    assert first.json()["partition"] == again.json()["partition"]


async def test_readiness_and_liveness_are_open_and_tell_only_their_status(
    settings: Settings,
) -> None:
    async with api_client(settings, authenticated=False) as client:
        live = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert live.status_code == 200
    assert ready.status_code == 200
    assert live.json() == ready.json() == {"status": "ok"}


async def test_openapi_documents_every_response_code(settings: Settings) -> None:
    async with api_client(settings) as client:
        spec = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    assert docs.status_code == 200
    accept = spec["paths"]["/orders"]["post"]["responses"]
    assert {"202", "409", "413", "415", "422", "503"} <= set(accept)
    assert "Idempotency-Key" in accept["409"]["description"]
    assert "Idempotency-Key" in accept["422"]["description"]
    assert {"200", "404", "503"} <= set(spec["paths"]["/orders/{order_id}"]["get"]["responses"])


async def _post_timed(client: Any, body: dict[str, Any]) -> tuple[int, float, Any]:
    started = time.monotonic()
    response = await client.post("/orders", json=body)
    return response.status_code, time.monotonic() - started, response


async def test_broker_down_gives_503_in_time_and_recovers_without_restart(
    endpoints: Endpoints, database_url: str, tmp_path: Path
) -> None:
    with throwaway_cluster(tmp_path / "kafka") as broker:
        settings = make_settings(
            Endpoints(broker.bootstrap, endpoints.database_url, "throwaway"), database_url
        )
        from app.topics import ensure_topics

        await ensure_topics(settings.kafka)
        # The API waits the acceptance deadline, plus the grace for an acknowledgement in flight.
        deadline = settings.api.ack_deadline_s + settings.api.ack_grace_s
        async with api_client(settings) as client:
            status, _, _ = await _post_timed(client, order_body("c-1", 1))
            assert status == 202

            broker.kill()
            status, took, refused = await _post_timed(client, order_body("c-1", 2))
            assert status == 503
            assert took < deadline + 1.0
            assert refused.headers["retry-after"] == str(settings.api.retry_after_s)
            assert refused.headers["content-type"] == "application/problem+json"
            assert "Idempotency-Key" in refused.json()["detail"]
            assert (await client.get("/readyz")).status_code == 503  # the database answers

            broker.start()
            recovered = None
            for _ in range(60):
                status, _, recovered = await _post_timed(client, order_body("c-1", 3))
                if status == 202:
                    break
                await asyncio.sleep(0.5)
            assert recovered is not None
            assert recovered.status_code == 202
            assert (await client.get("/readyz")).status_code == 200


async def test_a_broken_producer_is_replaced_and_readiness_reports_it_meanwhile(
    settings: Settings,
) -> None:
    from aiokafka.errors import OutOfOrderSequenceNumber

    async with api_client(settings) as client:
        publisher = publisher_behind(client)

        # A fatal sequence error: this request gets 503, the producer is thrown away.
        broken = publisher._producer
        original_send = broken.send_batch

        async def send_out_of_order(*args: Any, **kwargs: Any) -> Any:
            raise OutOfOrderSequenceNumber

        broken.send_batch = send_out_of_order
        refused = await client.post("/orders", json=order_body("c-9"))
        assert refused.status_code == 503
        assert (await client.get("/readyz")).status_code == 503
        for _ in range(100):
            if publisher._producer not in (None, broken):
                break
            await asyncio.sleep(0.1)
        assert publisher._producer is not broken
        broken.send_batch = original_send
        assert (await client.post("/orders", json=order_body("c-9"))).status_code == 202

        # A dead sender task (nothing would ever be delivered): replaced the same way.
        replaced = publisher._producer
        replaced._sender.sender_task.cancel()
        await asyncio.sleep(0)
        assert (await client.get("/readyz")).status_code == 503
        for _ in range(100):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert publisher._producer is not replaced
        assert (await client.post("/orders", json=order_body("c-9"))).status_code == 202


async def test_an_order_racing_a_producer_replacement_gets_503_not_500(
    settings: Settings,
) -> None:
    async with api_client(settings) as client:
        publisher = publisher_behind(client)
        # As if the supervisor closed the batches while this request fetched metadata.
        await publisher._batches.close()
        refused = await client.post("/orders", json=order_body("c-race"))
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert "being replaced" in refused.json()["detail"]

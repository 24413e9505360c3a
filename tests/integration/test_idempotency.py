"""Idempotency-Key against the real broker and PostgreSQL: one key, one order, one answer."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app import contract
from app.api.idempotency_rules import client_scope, fingerprint
from app.api.schemas import OrderRequest
from app.db.tables import idempotency_keys
from app.errors import BrokerUnavailableError, DatabaseUnavailableError
from app.settings import DatabaseSettings, Settings
from tests.integration.api_client import (
    api_client,
    bearer,
    intake_behind,
    order_body,
    publisher_behind,
    service_principal,
    token_for,
)
from tests.integration.kafka_tools import read_topic
from tests.integration.oracle import Expectations, check_ledger, wait_until_stored
from tests.integration.worker_harness import worker_running

PROBLEM_JSON = "application/problem+json"


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


async def records_on(settings: Settings) -> list[Any]:
    return await read_topic(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)


@asynccontextmanager
async def publishing_held(client: httpx.AsyncClient) -> AsyncIterator[asyncio.Event]:
    """Requests wait before they produce until the yielded event is set."""
    publisher = publisher_behind(client)
    original = publisher.publish
    release = asyncio.Event()

    async def held(*args: Any, **kwargs: Any) -> Any:
        await release.wait()
        return await original(*args, **kwargs)

    publisher.publish = held  # type: ignore[method-assign]
    try:
        yield release
    finally:
        release.set()
        publisher.publish = original  # type: ignore[method-assign]


async def test_the_same_key_with_another_body_is_refused_and_produces_nothing(
    settings: Settings, run_id: str
) -> None:
    # The regression: this used to be a 202 carrying the first order's id, and the second
    # order was dropped by the worker as a duplicate of the first, without a word.
    customer, key = f"{run_id}-c", keyed("k-1")
    async with api_client(settings) as client:
        first = await client.post("/orders", json=order_body(customer, 1), headers=key)
        other = await client.post("/orders", json=order_body(customer, 2), headers=key)
    assert first.status_code == 202
    assert other.status_code == 422
    assert other.headers["content-type"] == PROBLEM_JSON
    problem = other.json()
    assert problem["title"] == "Idempotency-Key already used"
    assert "different body" in problem["detail"]
    assert problem["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    [record] = await records_on(settings)
    assert str(contract.decode(record.value).order_id) == first.json()["order_id"]


async def test_the_same_key_and_body_get_the_same_answer_and_one_record(
    settings: Settings, run_id: str
) -> None:
    customer, key = f"{run_id}-c", keyed("k-1")
    body = order_body(customer, 1)
    # The same order spelt otherwise: members reordered, whitespace, "0.25" as "0.2500".
    respelt = json.dumps(
        {
            "currency": body["currency"],
            "items": [{"unit_price": "0.2500", "quantity": 2, "sku": "sku-1"}],
            "customer_id": customer,
        },
        indent=3,
    )
    async with api_client(settings) as client:
        first = await client.post("/orders", json=body, headers=key)
        again = await client.post("/orders", json=body, headers=key)
        spelt_otherwise = await client.post(
            "/orders", content=respelt, headers={**key, "content-type": "application/json"}
        )
    assert first.status_code == again.status_code == spelt_otherwise.status_code == 202
    assert first.json() == again.json() == spelt_otherwise.json()
    assert first.headers["location"] == again.headers["location"]
    [record] = await records_on(settings)
    assert (record.partition, record.offset) == (first.json()["partition"], first.json()["offset"])


async def test_the_same_key_while_the_first_request_is_in_flight_gets_409(
    settings: Settings, run_id: str
) -> None:
    customer, key = f"{run_id}-c", keyed("k-1")
    body = order_body(customer, 1)
    async with api_client(settings) as client:
        async with publishing_held(client) as release:
            first = asyncio.create_task(client.post("/orders", json=body, headers=key))
            await asyncio.sleep(0.5)  # the first request holds the key, waiting to produce
            assert not first.done()
            busy = await client.post("/orders", json=body, headers=key)
            release.set()
            first_answer = await first
        after = await client.post("/orders", json=body, headers=key)
    assert busy.status_code == 409
    assert busy.headers["content-type"] == PROBLEM_JSON
    assert busy.headers["retry-after"] == str(settings.api.retry_after_s)
    assert first_answer.status_code == after.status_code == 202
    assert first_answer.json() == after.json()
    assert len(await records_on(settings)) == 1


async def test_a_retry_after_a_503_produces_again_with_the_same_order_id_stored_once(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    """The ambiguous 503: the record reached the log, the answer was 503 all the same."""
    customer, key = f"{run_id}-c", keyed("k-1")
    body = order_body(customer, 1)
    async with api_client(settings) as client:
        publisher = publisher_behind(client)
        original = publisher.publish

        async def appended_but_unanswered(*args: Any, **kwargs: Any) -> Any:
            await original(*args, **kwargs)
            raise BrokerUnavailableError("no acknowledgement from Kafka within 3.0s")

        publisher.publish = appended_but_unanswered  # type: ignore[method-assign]
        refused = await client.post("/orders", json=body, headers=key)
        publisher.publish = original  # type: ignore[method-assign]
        retried = await client.post("/orders", json=body, headers=key)
        again = await client.post("/orders", json=body, headers=key)
    assert refused.status_code == 503
    assert retried.status_code == again.status_code == 202
    assert retried.json() == again.json()
    order_id = uuid.UUID(retried.json()["order_id"])
    on_topic = await records_on(settings)
    assert [contract.decode(r.value).order_id for r in on_topic] == [order_id, order_id]

    expected = Expectations()
    expected.accept(customer, order_id)
    async with worker_running(settings, engine):
        assert await wait_until_stored(engine, expected) == 1
    report = await check_ledger(engine, expected)
    assert report.holds, str(report)


async def test_a_key_whose_api_process_died_is_produced_again_after_its_lease(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    customer = f"{run_id}-c"
    body = order_body(customer, 1)
    order_id, now = contract.new_order_id(), datetime.now(UTC)
    abandoned = {  # as an API process leaves a key when it dies mid-request
        "scope": client_scope(service_principal(settings)),
        "fingerprint": fingerprint(OrderRequest.model_validate(body)),
        "order_id": order_id,
        "state": "in_flight",
        "expires_at": now + timedelta(hours=1),
    }
    async with engine.begin() as connection:
        await connection.execute(
            insert(idempotency_keys),
            [
                {**abandoned, "key": "lease-over", "lease_until": now - timedelta(seconds=1)},
                {**abandoned, "key": "lease-on", "lease_until": now + timedelta(minutes=1)},
            ],
        )
    async with api_client(settings) as client:
        taken_over = await client.post("/orders", json=body, headers=keyed("lease-over"))
        still_held = await client.post("/orders", json=body, headers=keyed("lease-on"))
    assert taken_over.status_code == 202
    assert taken_over.json()["order_id"] == str(order_id)
    assert still_held.status_code == 409
    assert len(await records_on(settings)) == 1


async def test_an_expired_key_is_a_new_key_and_is_purged(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    api = settings.api.model_copy(update={"idempotency_retention_s": 0.5})
    short = settings.model_copy(update={"api": api})
    customer, key = f"{run_id}-c", keyed("k-1")
    async with api_client(short) as client:
        first = await client.post("/orders", json=order_body(customer, 1), headers=key)
        await asyncio.sleep(0.7)
        # Forgotten: another body is no conflict, and the same body would be a new order too.
        second = await client.post("/orders", json=order_body(customer, 2), headers=key)
        assert first.status_code == second.status_code == 202
        assert first.json()["order_id"] != second.json()["order_id"]

        async def remembered() -> int:
            async with engine.connect() as connection:
                count = await connection.scalar(
                    select(func.count())
                    .select_from(idempotency_keys)
                    .where(idempotency_keys.c.scope == client_scope(service_principal(settings)))
                )
            return int(count or 0)

        for _ in range(50):  # the API purges expired keys in the background
            if await remembered() == 0:
                break
            await asyncio.sleep(0.1)
        assert await remembered() == 0
    assert len(await records_on(settings)) == 2


async def test_the_same_key_string_of_another_client_is_another_key(
    settings: Settings, run_id: str
) -> None:
    key = keyed("k-1")
    async with api_client(settings) as client:
        mine = await client.post("/orders", json=order_body(f"{run_id}-a", 1), headers=key)
        other_service = bearer(token_for(settings, subject=f"{run_id}-other-service"))
        theirs = await client.post(
            "/orders", json=order_body(f"{run_id}-b", 2), headers={**key, **other_service}
        )
    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["order_id"] != theirs.json()["order_id"]
    assert len(await records_on(settings)) == 2


async def test_without_postgresql_a_keyed_order_gets_503_and_an_unkeyed_one_still_202(
    settings: Settings, run_id: str
) -> None:
    closed_port = DatabaseSettings(
        url="postgresql+asyncpg://orders_app:unused@127.0.0.1:9/orders",  # type: ignore[arg-type]
        connect_timeout_s=2.0,
    )
    unreachable = settings.model_copy(update={"database": closed_port})
    customer = f"{run_id}-c"
    async with api_client(unreachable) as client:
        # A process that never read the intake state refuses every order: it could be missing
        # a pause of `orders topics grow` (app/api/intake.py).
        never_read = await client.post("/orders", json=order_body(customer, 0))
        assert never_read.status_code == 503
        assert "not read the intake state" in never_read.json()["detail"]
        # As if it had read it just before PostgreSQL went away (an outage shorter than
        # API_INTAKE_STALE_S; tests/integration/test_database_outage.py has a real one).
        await intake_behind(client).apply(None, time.monotonic())
        refused = await client.post("/orders", json=order_body(customer, 1), headers=keyed("k"))
        unkeyed = await client.post("/orders", json=order_body(customer, 2))
    assert refused.status_code == 503
    assert refused.headers["content-type"] == PROBLEM_JSON
    assert refused.headers["retry-after"] == str(settings.api.retry_after_s)
    assert "Idempotency-Key" in refused.json()["detail"]
    assert unkeyed.status_code == 202  # orders without a key never touch PostgreSQL
    [record] = await records_on(settings)
    assert str(contract.decode(record.value).order_id) == unkeyed.json()["order_id"]


def keys_behind(client: httpx.AsyncClient) -> Any:
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    return transport.app.state.resources.idempotency_keys  # type: ignore[attr-defined]


async def test_a_202_whose_answer_could_not_be_remembered_is_still_the_only_answer(
    settings: Settings, run_id: str
) -> None:
    """Found in review: PostgreSQL dropping the connection between Kafka's acknowledgement and
    remembering the answer left the key in flight; a retry after the lease produced again and
    got another offset. The answer is now remembered in the background while the lease lasts."""
    customer, key = f"{run_id}-blip", keyed("k-blip")
    body = order_body(customer, 1)
    async with api_client(settings) as client:
        keys = keys_behind(client)
        original = keys._complete
        calls = 0

        async def blip_once(*args: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise DatabaseUnavailableError("connection dropped")
            return await original(*args)

        keys._complete = blip_once
        first = await client.post("/orders", json=body, headers=key)
        for _ in range(50):
            await asyncio.sleep(0.1)
            if calls >= 2:
                break
        again = await client.post("/orders", json=body, headers=key)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert len(await records_on(settings)) == 1


async def test_a_key_is_kept_for_its_retention_from_its_answer_not_its_first_attempt(
    settings: Settings, run_id: str
) -> None:
    """Found in review: retention ran from the first attempt, so a slow first answer could
    expire moments after it was given, and a confirming retry made a second order."""
    api = settings.api.model_copy(update={"idempotency_retention_s": 2.0})
    settings = settings.model_copy(update={"api": api})
    customer, key = f"{run_id}-slow", keyed("k-slow")
    body = order_body(customer, 1)
    async with api_client(settings) as client:
        async with publishing_held(client) as release:
            first = asyncio.create_task(client.post("/orders", json=body, headers=key))
            await asyncio.sleep(1.5)  # answered 1.5 s into its 2 s retention
            release.set()
            answer = await first
        await asyncio.sleep(1.0)  # past 2 s from the first attempt, within 2 s of the answer
        again = await client.post("/orders", json=body, headers=key)
    assert answer.status_code == again.status_code == 202
    assert answer.json() == again.json()


@pytest.mark.parametrize("value", ["a\x01b", " lead", "tab\there\x7f"])
async def test_a_key_with_a_character_the_schema_excludes_is_422_not_passed_on(
    settings: Settings, run_id: str, value: str
) -> None:
    async with api_client(settings) as client:
        response = await client.post(
            "/orders", json=order_body(f"{run_id}-h", 1), headers={"Idempotency-Key": value}
        )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert await records_on(settings) == []


async def test_an_idempotency_key_sent_twice_is_422(settings: Settings, run_id: str) -> None:
    async with api_client(settings) as client:
        response = await client.post(
            "/orders",
            json=order_body(f"{run_id}-twice", 1),
            headers=[("Idempotency-Key", "k-1"), ("Idempotency-Key", "k-2")],
        )
    assert response.status_code == 422, response.text
    assert "once" in response.json()["errors"][0]["msg"]
    assert await records_on(settings) == []

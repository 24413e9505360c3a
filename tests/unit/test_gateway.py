"""The simulated gateway and its client, in-process (the app in this event loop on a loopback
port, or through httpx's ASGI transport): no services."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import httpx
import pytest

from app.payments.charges import Charge, ChargeRequest, charge_key_for
from app.payments.gateway import GatewayBehaviour, draw_fault, gateway_app, gateway_in_process
from app.payments.gateway_client import (
    GatewayClient,
    GatewayError,
    Outcome,
    backoff_delay,
    charge_until_final,
    is_retriable,
    settle_charge,
)
from app.payments.gateway_ledger import GatewayLedger

BASE = "http://gateway.test"


def a_charge(customer: str = "c-1", amount: str = "12.50") -> ChargeRequest:
    order_id = uuid.uuid4()
    return ChargeRequest(
        charge_key=charge_key_for(order_id),
        order_id=order_id,
        customer_id=customer,
        amount=Decimal(amount),
        currency="EUR",
        request_id="req-1",
    )


def response_error(status: int, garbled: bool = False) -> aiohttp.ClientResponseError:
    error = aiohttp.ClientResponseError(None, (), status=status)  # type: ignore[arg-type]
    if garbled:  # how aiohttp reports a reply it could not parse
        error.__cause__ = aiohttp.http_exceptions.BadStatusLine("2O1 Creat\x00d")
    return error


@contextlib.asynccontextmanager
async def client_for(
    behaviour: GatewayBehaviour, ledger: GatewayLedger, timeout_s: float = 2.0
) -> AsyncIterator[GatewayClient]:
    async with (
        gateway_in_process(behaviour, ledger) as url,
        GatewayClient(url, timeout_s) as client,
    ):
        yield client


async def test_a_charge_key_charges_once_and_replays_after() -> None:
    ledger = GatewayLedger()
    request = a_charge()
    async with client_for(GatewayBehaviour(latency_s=0), ledger) as client:
        first = await client.charge(request)
        again = await client.charge(request)
    assert not first.replayed
    assert again.replayed
    assert again.charge_id == first.charge_id
    assert first.amount == Decimal("12.50")
    stats = ledger.stats()
    assert stats["charges"] == 1
    assert stats["replays"] == 1
    assert stats["calls"] == 2
    assert stats["orders_charged_more_than_once"] == 0


async def test_the_wire_answers_201_then_200_and_money_as_a_string() -> None:
    request = a_charge(amount="0.10")
    transport = httpx.ASGITransport(app=gateway_app(GatewayBehaviour(latency_s=0)))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        first = await http.post("/charges", content=request.model_dump_json())
        again = await http.post("/charges", content=request.model_dump_json())
        found = await http.get(f"/charges/{request.charge_key}")
        missing = await http.get("/charges/nothing")
        stats = await http.get("/stats")
    assert first.status_code == 201
    assert first.json()["amount"] == "0.10"
    assert again.status_code == 200
    assert again.json()["replayed"] is True
    assert found.json()["charge_id"] == first.json()["charge_id"]
    assert missing.status_code == 404
    assert stats.json()["charges"] == 1


async def test_the_same_key_for_another_amount_is_a_final_409() -> None:
    ledger = GatewayLedger()
    request = a_charge()
    other = request.model_copy(update={"amount": Decimal("99")})
    async with client_for(GatewayBehaviour(latency_s=0), ledger) as client:
        await client.charge(request)
        with pytest.raises(GatewayError) as refused:
            await client.charge(other)
    assert refused.value.status == 409
    assert not refused.value.retriable
    assert ledger.stats()["conflicts"] == 1
    assert ledger.stats()["charges"] == 1


async def test_a_body_it_cannot_read_is_422() -> None:
    transport = httpx.ASGITransport(app=gateway_app(GatewayBehaviour(latency_s=0)))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        answer = await http.post("/charges", content=b'{"amount": 1.5}')
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"


async def test_an_injected_error_is_retriable_and_charges_nothing() -> None:
    ledger = GatewayLedger()
    async with client_for(GatewayBehaviour(latency_s=0, error_rate=1.0), ledger) as client:
        with pytest.raises(GatewayError) as failed:
            await client.charge(a_charge())
    assert failed.value.status == 503
    assert failed.value.retriable
    assert ledger.stats()["charges"] == 0
    assert ledger.stats()["injected_errors"] == 1


async def test_an_injected_timeout_charged_and_the_retry_gets_that_charge() -> None:
    ledger = GatewayLedger()
    request = a_charge()
    late = GatewayBehaviour(latency_s=0, timeout_rate=1.0, timeout_answer_s=30)
    async with client_for(late, ledger, timeout_s=0.2) as client:
        started = time.perf_counter()
        with pytest.raises(GatewayError) as failed:
            await client.charge(request)
        assert time.perf_counter() - started < 2, "the client's timeout bounds the call"
    assert failed.value.retriable
    assert ledger.find(request.charge_key) is not None, "charged, though never answered"
    async with client_for(GatewayBehaviour(latency_s=0), ledger) as client:
        retried = await client.charge(request)
    assert retried.replayed
    assert ledger.stats()["charges"] == 1


async def test_a_refused_connection_is_retriable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed when the block ends: nothing listens there
    async with GatewayClient(f"http://127.0.0.1:{port}", 1.0) as client:
        with pytest.raises(GatewayError) as failed:
            await client.charge(a_charge())
    assert failed.value.retriable
    assert failed.value.status is None


@pytest.mark.parametrize(
    ("failure", "retriable"),
    [
        (503, True),
        (500, True),
        (502, True),
        (408, True),
        (429, True),
        (409, False),
        (422, False),
        (400, False),
        (404, False),
        (TimeoutError(), True),
        (aiohttp.ServerDisconnectedError(), True),
        (aiohttp.ClientOSError(104, "connection reset"), True),
        (aiohttp.ServerTimeoutError(), True),
        (aiohttp.ClientPayloadError("cut short"), True),
        (aiohttp.InvalidURL("nowhere"), False),
        (ValueError("a bug"), False),
        (response_error(409), False),
        (response_error(422), False),
        (response_error(429), True),
        (response_error(503), True),
        (response_error(0), True),
        (response_error(400, garbled=True), True),
    ],
)
def test_one_place_decides_what_is_retried(failure: int | Exception, retriable: bool) -> None:
    assert is_retriable(failure) is retriable


async def test_a_garbled_reply_is_retriable() -> None:
    """A gateway restarting mid-answer may send bytes that are not HTTP: aiohttp raises
    ClientResponseError(400) for them, which is no answer at all, not a refusal."""

    async def garble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 2O1 Creat\x00d\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garble, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with GatewayClient(f"http://127.0.0.1:{port}", 2.0) as client:
            with pytest.raises(GatewayError) as failed:
                await client.charge(a_charge())
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(failed.value.__cause__, aiohttp.ClientResponseError)
    assert failed.value.retriable


def test_backoff_grows_to_its_cap_and_never_overflows() -> None:
    rng = random.Random(3)
    assert all(backoff_delay(1, 0.1, 5.0, rng) <= 0.1 for _ in range(100))
    late = [backoff_delay(10_000, 0.1, 5.0, rng) for _ in range(200)]
    assert max(late) <= 5.0
    assert max(late) > 2.5, "full jitter over [0, max_s] once the exponent passes the cap"


async def test_retries_with_the_same_key_until_charged_never_twice() -> None:
    ledger = GatewayLedger()
    flaky = GatewayBehaviour(latency_s=0, error_rate=0.6, seed=7)
    attempts: list[tuple[int, Charge | GatewayError]] = []
    requests = [a_charge(customer=f"c-{n}") for n in range(30)]
    async with client_for(flaky, ledger) as client:
        for request in requests:
            charge = await charge_until_final(
                client,
                request,
                backoff_initial_s=0.0001,
                backoff_max_s=0.001,
                on_attempt=lambda n, outcome: attempts.append((n, outcome)),
            )
            assert charge.charge_key == request.charge_key
    stats = ledger.stats()
    assert stats["charges"] == 30
    assert stats["orders_charged_more_than_once"] == 0
    assert stats["injected_errors"] > 0, "the seed should have injected some errors"
    assert len(attempts) == stats["calls"], "every attempt seen by the audit hook"
    failed = [outcome for _, outcome in attempts if isinstance(outcome, GatewayError)]
    assert len(failed) == stats["injected_errors"]


async def test_a_final_error_is_not_retried() -> None:
    ledger = GatewayLedger()
    request = a_charge()
    async with client_for(GatewayBehaviour(latency_s=0), ledger) as client:
        await client.charge(request)
        with pytest.raises(GatewayError, match="409"):
            await charge_until_final(
                client,
                request.model_copy(update={"currency": "USD"}),
                backoff_initial_s=0.001,
                backoff_max_s=0.01,
            )
    assert ledger.stats()["calls"] == 2


async def test_settling_reports_each_attempt_before_and_after_and_a_refusal_as_a_result() -> None:
    ledger = GatewayLedger()
    flaky = GatewayBehaviour(latency_s=0, error_rate=0.5, seed=11)
    events: list[tuple[str, int, str]] = []

    async def before(attempt: int) -> None:
        events.append(("before", attempt, ""))

    async def after(attempt: int, outcome: Outcome) -> None:
        kind = "error" if isinstance(outcome, GatewayError) else "charge"
        events.append(("after", attempt, kind))

    request = a_charge()
    async with client_for(flaky, ledger) as client:
        charged = await settle_charge(
            client,
            request,
            backoff_initial_s=0.0001,
            backoff_max_s=0.001,
            before_attempt=before,
            after_attempt=after,
        )
        replayed = await settle_charge(
            client, request, backoff_initial_s=0.0001, backoff_max_s=0.001
        )
        refused = await settle_charge(
            client,
            request.model_copy(update={"amount": Decimal("1")}),
            backoff_initial_s=0.0001,
            backoff_max_s=0.001,
        )
    assert charged.outcome == "charged"
    assert replayed.outcome == "replayed"
    assert replayed.charge is not None
    assert charged.charge is not None
    assert replayed.charge.charge_id == charged.charge.charge_id
    assert refused.outcome == "refused"
    assert refused.charge is None
    assert refused.refusal is not None
    assert refused.refusal.status == 409
    # Every attempt announced before its call and reported after it, in that order.
    assert charged.attempts > 1, "the seed should have failed the first call"
    expected: list[tuple[str, int, str]] = []
    for n in range(1, charged.attempts + 1):
        outcome = "charge" if n == charged.attempts else "error"
        expected += [("before", n, ""), ("after", n, outcome)]
    assert events == expected
    assert ledger.stats()["charges"] == 1


def test_seeded_draws_repeat_and_follow_the_rates() -> None:
    behaviour = GatewayBehaviour(error_rate=0.2, timeout_rate=0.1, seed=42)
    rng_a, rng_b = random.Random(42), random.Random(42)
    a = [draw_fault(rng_a, behaviour) for _ in range(5000)]
    b = [draw_fault(rng_b, behaviour) for _ in range(5000)]
    assert a == b
    assert 0.17 < a.count("error") / 5000 < 0.23
    assert 0.08 < a.count("timeout") / 5000 < 0.12


def test_the_ledger_counts_a_customer_served_twice_at_once() -> None:
    ledger = GatewayLedger()
    one, two = a_charge(customer="c-9"), a_charge(customer="c-9")
    ledger.call_started(one)
    ledger.call_started(two)  # the same customer's next order while the first is served
    assert ledger.customer_overlaps == 1
    ledger.call_served(one)
    ledger.call_served(two)
    ledger.call_started(a_charge(customer="c-9"))
    assert ledger.customer_overlaps == 1  # one after the other is not an overlap

"""The API's intake gate without services: what a read of intake_state means for POST /orders,
what the process reports, and the 503 a refusal becomes."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.intake import OPEN, IntakeGate, Verdict, judge, member_state
from app.api.metrics import UNAVAILABLE_REASONS
from app.api.problems import install_problem_handlers
from app.db.intake import IntakeState
from app.errors import IntakeClosedError
from app.publisher import OrderPublisher

STALE_S = 30.0


class Producer:
    """What the gate asks of OrderPublisher: the partition count its metadata shows."""

    def __init__(self, partitions: int | None) -> None:
        self.partitions = partitions
        self.broker_partitions = partitions  # what a refresh would find
        self.expected: int | None = None
        self.refreshes = 0

    def expect_partitions(self, count: int | None) -> None:
        self.expected = count

    async def partition_count(self, refresh: bool = False) -> int | None:
        if refresh:
            self.refreshes += 1
            self.partitions = self.broker_partitions
        return self.partitions


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gate_of(producer: Producer, clock: Clock, answer_bound_s: float = 9.0) -> IntakeGate:
    return IntakeGate(
        cast(AsyncEngine, None),  # never reached: these tests hand the gate its reads
        cast(OrderPublisher, producer),
        "orders",
        poll_s=0.25,
        stale_s=STALE_S,
        read_timeout_s=5.0,
        answer_bound_s=answer_bound_s,
        clock=clock,
    )


def refusal(gate: IntakeGate) -> str:
    with pytest.raises(IntakeClosedError) as refused, gate:
        pass
    return refused.value.reason


def state(generation: int = 3, *, paused: bool = False, partitions: int = 6) -> IntakeState:
    return IntakeState(
        generation, paused, partitions, "growing to 12 partitions" if paused else None
    )


@pytest.mark.parametrize(
    ("read", "producer", "reopening", "verdict"),
    [
        (None, 6, False, OPEN),  # never registered: no count to hold it to
        (state(), 6, False, OPEN),
        (state(), None, False, OPEN),  # no metadata yet: the publisher checks each order
        (state(paused=True), 6, False, Verdict(False, "intake_paused")),
        (state(partitions=12), 6, True, Verdict(False, "intake_paused")),  # reopening
        (state(), 12, False, Verdict(False, "partition_count_changed")),
    ],
)
def test_judge(
    read: IntakeState | None, producer: int | None, reopening: bool, verdict: Verdict
) -> None:
    assert judge(read, producer, reopening) == verdict


def test_member_states() -> None:
    assert member_state(True, 3) == "open"
    assert member_state(False, 3) == "closing"
    assert member_state(False, 0) == "closed"


async def test_closed_until_the_first_read_then_open() -> None:
    clock, producer = Clock(), Producer(6)
    gate = gate_of(producer, clock)
    assert refusal(gate) == "intake_unknown"
    assert not gate.open
    await gate.apply(state(), clock())
    with gate:
        assert gate.in_flight == 1
    assert gate.in_flight == 0
    assert gate.open
    assert producer.expected == 6  # the publisher holds each order to the registered count


async def test_a_state_unread_for_the_stale_bound_closes_a_shorter_outage_does_not() -> None:
    clock, producer = Clock(), Producer(6)
    gate = gate_of(producer, clock)
    await gate.apply(state(), clock())
    clock.now += STALE_S  # no read since: still within the bound
    with gate:
        pass
    clock.now += 0.01
    assert refusal(gate) == "intake_unknown"
    await gate.apply(state(), clock())
    with gate:
        pass


async def test_a_pause_closes_and_is_acknowledged_once_every_order_let_in_is_answered() -> None:
    clock, producer = Clock(), Producer(6)
    gate = gate_of(producer, clock)
    await gate.apply(state(3), clock())
    assert gate.report().state == "open"
    with gate:  # an order let in before the pause was read
        await gate.apply(state(4, paused=True), clock())
        assert refusal(gate) == "intake_paused"
        report = gate.report()
        assert (report.generation, report.state) == (4, "closing")
    report = gate.report()
    assert (report.generation, report.state) == (4, "closed")
    assert report.closes_within_s == STALE_S + 9.0


async def test_an_abandoned_order_stays_counted_until_it_can_no_longer_be_appended() -> None:
    clock, producer = Clock(), Producer(6)
    # A real timer (call_later): long enough that "closing" is read well before it fires on a
    # loaded machine, short enough for a unit test.
    gate = gate_of(producer, clock, answer_bound_s=1.0)
    await gate.apply(state(), clock())

    async def abandoned() -> None:
        with gate:
            await asyncio.sleep(10)

    task = asyncio.create_task(abandoned())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await gate.apply(state(4, paused=True), clock())
    assert gate.report().state == "closing"  # its record may still be appended
    for _ in range(600):  # it fires after 1 s; up to 30 s however slow the machine
        if gate.report().state == "closed":
            break
        await asyncio.sleep(0.05)
    assert gate.report().state == "closed"
    assert gate.in_flight == 0


async def test_resuming_opens_only_once_the_producer_sees_the_new_count() -> None:
    clock, producer = Clock(), Producer(6)
    gate = gate_of(producer, clock)
    await gate.apply(state(3), clock())
    await gate.apply(state(4, paused=True), clock())
    # Resumed with 12: the producer's metadata still says 6, and the broker too for now.
    await gate.apply(state(5, partitions=12), clock())
    assert refusal(gate) == "intake_paused"
    assert producer.refreshes == 1
    assert gate.report().state == "closed"
    producer.broker_partitions = 12  # the new partitions show in the broker's metadata
    await gate.apply(state(5, partitions=12), clock())
    assert producer.refreshes == 1  # at most one refresh a second
    clock.now += 1.0
    await gate.apply(state(5, partitions=12), clock())
    assert producer.refreshes == 2
    with gate:
        pass
    assert producer.expected == 12


async def test_a_count_changed_behind_the_apis_back_refuses_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, producer = Clock(), Producer(6)
    gate = gate_of(producer, clock)
    await gate.apply(state(3), clock())
    producer.partitions = producer.broker_partitions = 8  # kafka-topics --alter
    with caplog.at_level(logging.ERROR, "app.api.intake"):
        await gate.apply(state(3), clock())
    assert refusal(gate) == "partition_count_changed"
    assert "orders topics grow" in caplog.text
    assert producer.expected == 6


async def test_a_refusal_is_a_503_with_retry_after_counted_by_its_reason() -> None:
    assert {"intake_paused", "intake_unknown", "partition_count_changed"} <= set(
        UNAVAILABLE_REASONS
    )
    assert len(UNAVAILABLE_REASONS) == len(set(UNAVAILABLE_REASONS))
    counted: list[str] = []
    app = FastAPI()
    install_problem_handlers(app, retry_after_s=3, count_unavailable=counted.append)

    @app.post("/orders")
    async def paused() -> None:
        raise IntakeClosedError("intake is paused (growing to 12 partitions)", "intake_paused")

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
        response = await client.post("/orders")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    assert response.headers["content-type"] == "application/problem+json"
    assert "growing to 12 partitions" in response.json()["detail"]
    assert counted == ["intake_paused"]

"""The payments worker's pure parts: the event it emits, the transactional id that fences."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from app.payments.audit import AttemptRow
from app.payments.charges import Charge, ChargeRequest, charge_key_for
from app.payments.events import PaymentEvent
from app.payments.transactions import transactional_id_for


def a_request() -> ChargeRequest:
    order_id = uuid.uuid4()
    return ChargeRequest(
        charge_key=charge_key_for(order_id),
        order_id=order_id,
        customer_id="c-1",
        amount=Decimal("12.50"),
        currency="EUR",
        request_id="req-1",
    )


def test_a_charged_event_names_its_charge_its_record_and_is_keyed_by_customer() -> None:
    request = a_request()
    charge = Charge(
        charge_id=uuid.uuid4(),
        charge_key=request.charge_key,
        order_id=request.order_id,
        customer_id=request.customer_id,
        amount=request.amount,
        currency=request.currency,
        request_id=request.request_id,
        charged_at=datetime.now(UTC),
    )
    event = PaymentEvent.of(request, charge, partition=3, offset=41)
    assert event.key() == b"c-1"
    again = PaymentEvent.model_validate_json(event.value())
    assert again == event
    assert (again.status, again.charge_id, again.source_partition, again.source_offset) == (
        "charged",
        charge.charge_id,
        3,
        41,
    )
    assert b'"amount":"12.50"' in event.value()  # money as a decimal string


def test_a_refused_charge_is_an_event_without_a_charge() -> None:
    event = PaymentEvent.of(a_request(), None, partition=0, offset=0)
    assert (event.status, event.charge_id) == ("refused", None)


def test_one_transactional_id_per_group_and_input_partition() -> None:
    ids = {transactional_id_for("g", "orders", p) for p in range(6)}
    assert len(ids) == 6
    assert transactional_id_for("g", "orders", 2) == transactional_id_for("g", "orders", 2)
    assert transactional_id_for("g", "orders", 2) != transactional_id_for("h", "orders", 2)


def test_an_attempts_outcome_is_a_new_row_with_the_same_attempt() -> None:
    started = AttemptRow.started(a_request(), attempt=2, member="m-1")
    assert started.outcome == "started"
    assert started.finished_at is None
    done = started.finished("failed", 503, "x" * 1000)
    assert (done.attempt, done.charge_key, done.started_at) == (
        2,
        started.charge_key,
        started.started_at,
    )
    assert done.outcome == "failed"
    assert done.finished_at is not None
    assert done.detail is not None
    assert len(done.detail) == 500

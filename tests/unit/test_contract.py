"""The wire contract: envelopes round-trip, ids are new each time, bad records are poison."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from app import contract
from app.contract import OrderEnvelope, OrderLine
from app.errors import PoisonRecordError


def envelope(**overrides: object) -> OrderEnvelope:
    items = (OrderLine(sku="A", quantity=3, unit_price=Decimal("0.10")),)
    fields: dict[str, object] = {
        "order_id": uuid.uuid4(),
        "customer_id": "c-1",
        "items": items,
        "total": contract.order_total(items),
        "currency": "EUR",
        "accepted_at": datetime(2026, 1, 1, tzinfo=UTC),
        "accept_by": datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC),
    }
    fields.update(overrides)
    return OrderEnvelope.model_validate(fields)


def test_total_is_exact_decimal_arithmetic() -> None:
    items = [OrderLine(sku="A", quantity=3, unit_price=Decimal("0.10"))] * 3
    # With floats this is 0.8999999999999999.
    assert contract.order_total(items) == Decimal("0.90")


def test_an_envelope_round_trips_through_bytes_with_headers() -> None:
    original = envelope()
    value, headers = contract.encode(original, "req-1")
    assert contract.decode(value) == original
    assert dict(headers) == {
        "content-type": b"application/json",
        "schema-version": b"1",
        "request-id": b"req-1",
    }
    assert json.loads(value)["total"] == "0.30"  # money travels as a string, never a float


def test_order_ids_are_never_the_same_twice() -> None:
    # Not derived from the customer or an Idempotency-Key: nobody can compute another's id.
    assert len({contract.new_order_id() for _ in range(1000)}) == 1000


def test_a_new_order_id_is_a_time_ordered_uuid7() -> None:
    earlier = contract.new_order_id()
    time.sleep(0.002)  # UUIDv7 orders by its millisecond timestamp
    later = contract.new_order_id()
    assert isinstance(earlier, uuid.UUID)
    assert (earlier.version, later.version) == (7, 7)
    assert earlier < later


def test_the_key_is_the_customer_id() -> None:
    assert envelope(customer_id="ACME:7").key == b"ACME:7"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "tombstone"),
        (b"not json", "value"),
        (b"[]", "value"),
        (b'{"schema_version": 2}', "schema_version"),
    ],
)
def test_undecodable_records_are_poison(value: bytes | None, reason: str) -> None:
    with pytest.raises(PoisonRecordError, match=reason):
        contract.decode(value)


def test_a_total_that_disagrees_with_the_items_is_poison() -> None:
    value, _ = contract.encode(envelope(), "r")
    tampered = json.loads(value)
    tampered["total"] = "99.00"
    with pytest.raises(PoisonRecordError, match="total"):
        contract.decode(json.dumps(tampered).encode())


def test_unknown_fields_are_poison() -> None:
    value, _ = contract.encode(envelope(), "r")
    extended = {**json.loads(value), "surprise": True}
    with pytest.raises(PoisonRecordError, match="surprise"):
        contract.decode(json.dumps(extended).encode())


def test_only_a_broker_append_time_after_the_deadline_refuses_an_order() -> None:
    order = envelope()
    deadline_ms = int(order.accept_by.timestamp() * 1000)
    assert contract.appended_in_time(order, deadline_ms, contract.LOG_APPEND_TIME)
    assert not contract.appended_in_time(order, deadline_ms + 1, contract.LOG_APPEND_TIME)
    # A producer's own (CreateTime) timestamp says nothing about when the broker took it.
    assert contract.appended_in_time(order, deadline_ms + 60_000, 0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("sku", "A\u0000B"), ("sku", "A\u202eB"), ("unit_price", "1e2"), ("unit_price", -1)],
)
def test_a_record_the_api_would_refuse_is_poison_when_produced_straight_to_the_topic(
    field: str, value: object
) -> None:
    # PostgreSQL's jsonb refuses \u0000: stored, it would fail the worker's batch on every retry.
    record = json.loads(contract.encode(envelope(), "r")[0])
    record["items"][0][field] = value
    with pytest.raises(PoisonRecordError, match=f"items.0.{field}"):
        contract.decode(json.dumps(record).encode())


@pytest.mark.parametrize("instant", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
@pytest.mark.parametrize("field", ["accepted_at", "accept_by"])
def test_an_instant_outside_pythons_years_once_in_utc_is_poison(field: str, instant: str) -> None:
    """PostgreSQL would store it, and every read of that order would fail in the driver."""
    body = json.loads(contract.encode(envelope(), "r")[0])
    body[field] = instant
    with pytest.raises(PoisonRecordError, match=field):
        contract.decode(json.dumps(body).encode())

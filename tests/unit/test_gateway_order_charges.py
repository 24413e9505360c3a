"""Which records ask for a charge, and what the charge carries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from aiokafka.structs import ConsumerRecord

from app import contract
from app.payments.charges import charge_key_for
from app.payments.order_charges import charge_for
from app.worker.fetch_positions import Record


def record_of(
    value: bytes, headers: list[tuple[str, bytes]], appended: datetime | None = None
) -> Record:
    at = appended or datetime.now(UTC)
    return ConsumerRecord(
        "orders",
        2,
        7,
        int(at.timestamp() * 1000),
        contract.LOG_APPEND_TIME,
        b"c-1",
        value,
        None,
        len(value),
        3,
        tuple(headers),
    )


def an_order(unit_price: str = "4.25") -> contract.OrderEnvelope:
    now = datetime.now(UTC)
    items = (contract.OrderLine(sku="s", quantity=2, unit_price=Decimal(unit_price)),)
    return contract.OrderEnvelope(
        order_id=uuid.uuid4(),
        customer_id="c-1",
        items=items,
        total=contract.order_total(items),
        currency="EUR",
        accepted_at=now,
        accept_by=now + timedelta(seconds=5),
    )


def test_an_order_asks_for_its_total_under_its_own_charge_key() -> None:
    order = an_order()
    value, headers = contract.encode(order, "req-42")
    request = charge_for(record_of(value, headers))
    assert request is not None
    assert request.charge_key == charge_key_for(order.order_id)
    assert request.amount == Decimal("8.50")
    assert request.currency == "EUR"
    assert request.customer_id == "c-1"
    assert request.request_id == "req-42"


def test_records_that_are_not_orders_ask_for_nothing() -> None:
    assert charge_for(record_of(b"not json", [])) is None
    order = an_order()
    value, headers = contract.encode(order, "req-1")
    late = order.accept_by + timedelta(seconds=1)  # answered 503: not an order
    assert charge_for(record_of(value, headers, appended=late)) is None
    free, free_headers = contract.encode(an_order(unit_price="0"), "req-2")
    assert charge_for(record_of(free, free_headers)) is None

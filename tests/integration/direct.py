"""Records produced straight to the orders topic, as a producer that skips the API would."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaProducer
from uuid_utils.compat import uuid7

from app import contract


@dataclass(frozen=True)
class DirectOrder:
    customer_id: str
    order_id: uuid.UUID
    value: bytes


def direct_order(customer: str, n: int, *, deadline_s: float = 60.0, **line: Any) -> DirectOrder:
    """A valid v1 envelope (unless `line` overrides the item with something invalid)."""
    now = datetime.now(UTC)
    order_id = uuid7()
    item = {"sku": f"p-{n}", "quantity": 1, "unit_price": str(Decimal(n)), **line}
    envelope = {
        "schema_version": 1,
        "order_id": str(order_id),
        "customer_id": customer,
        "items": [item],
        "total": str(Decimal(item["unit_price"]) * int(item["quantity"])),
        "currency": "USD",
        "accepted_at": now.isoformat(),
        "accept_by": (now + timedelta(seconds=deadline_s)).isoformat(),
    }
    return DirectOrder(customer, order_id, json.dumps(envelope).encode())


def valid_order(customer: str, n: int) -> DirectOrder:
    order = direct_order(customer, n)
    contract.decode(order.value)  # the helper's own check: this one is a real order
    return order


async def started_producer(bootstrap: str, **options: Any) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, **options)
    await producer.start()
    return producer


def payable_order(customer: str) -> contract.OrderEnvelope:
    """A good order of one line (9.90 EUR), accepted now and payable for 10 minutes."""
    now = datetime.now(UTC)
    items = (contract.OrderLine(sku="sku-1", quantity=1, unit_price=Decimal("9.90")),)
    return contract.OrderEnvelope(
        order_id=uuid.uuid4(),
        customer_id=customer,
        items=items,
        total=contract.order_total(items),
        currency="EUR",
        accepted_at=now,
        accept_by=now + timedelta(minutes=10),
    )


def late_order(customer: str) -> tuple[contract.OrderEnvelope, datetime]:
    """A good order first appended 30 s ago, its acceptance deadline long past by now."""
    first_append = datetime.now(UTC) - timedelta(seconds=30)
    items = (contract.OrderLine(sku="a", quantity=1, unit_price=Decimal("1.00")),)
    order = contract.OrderEnvelope(
        order_id=contract.new_order_id(),
        customer_id=customer,
        items=items,
        total=contract.order_total(items),
        currency="EUR",
        accepted_at=first_append,
        accept_by=first_append + timedelta(seconds=5),
    )
    return order, first_append

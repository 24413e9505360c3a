"""Idempotency-Key: what a keyed request gets, decided from what is remembered (no services)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.api.idempotency_rules import Decision, decide, fingerprint
from app.api.schemas import OrderRequest
from app.db.idempotency_keys import RememberedKey, State

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
BODY = fingerprint(
    OrderRequest.model_validate(
        {
            "customer_id": "c-1",
            "items": [{"sku": "A", "quantity": 1, "unit_price": "1"}],
            "currency": "EUR",
        }
    )
)
OTHER_BODY = b"\x00" * 32


def remembered(
    state: State,
    *,
    body: bytes = BODY,
    lease_left_s: float = 5.0,
    expires_in_s: float = 3600.0,
) -> RememberedKey:
    completed = state == "completed"
    return RememberedKey(
        fingerprint=body,
        order_id=uuid.uuid4(),
        state=state,
        partition=3 if completed else None,
        offset=41 if completed else None,
        lease_until=NOW + timedelta(seconds=lease_left_s),
        expires_at=NOW + timedelta(seconds=expires_in_s),
    )


@pytest.mark.parametrize(
    ("row", "decision"),
    [
        (None, Decision.NEW),
        (remembered("completed"), Decision.REPLAY),
        (remembered("failed"), Decision.RETRY),
        (remembered("in_flight"), Decision.IN_FLIGHT),
        # The API process died mid-request: its lease ran out, the key may be used again.
        (remembered("in_flight", lease_left_s=-0.001), Decision.RETRY),
        (remembered("in_flight", lease_left_s=0), Decision.RETRY),
        # A failed key's lease does not matter: the 503 was the answer.
        (remembered("failed", lease_left_s=60), Decision.RETRY),
        # Another body, in any state: 422 (even in flight: retrying could never succeed).
        (remembered("completed", body=OTHER_BODY), Decision.MISMATCH),
        (remembered("failed", body=OTHER_BODY), Decision.MISMATCH),
        (remembered("in_flight", body=OTHER_BODY), Decision.MISMATCH),
        # Expired means unknown: a new order, whatever the body and the state ...
        (remembered("completed", expires_in_s=0), Decision.NEW),
        (remembered("completed", body=OTHER_BODY, expires_in_s=-1), Decision.NEW),
        (remembered("failed", expires_in_s=-1), Decision.NEW),
        (remembered("in_flight", lease_left_s=-1, expires_in_s=-1), Decision.NEW),
        # ... but not while a live request holds the key (a retention shorter than a request).
        (remembered("in_flight", expires_in_s=-1), Decision.IN_FLIGHT),
        (remembered("in_flight", body=OTHER_BODY, expires_in_s=-1), Decision.MISMATCH),
    ],
)
def test_the_decision_for_a_keyed_request(row: RememberedKey | None, decision: Decision) -> None:
    assert decide(row, BODY, NOW) is decision


def order(**fields: Any) -> OrderRequest:
    body: dict[str, Any] = {
        "customer_id": "c-1",
        "items": [
            {"sku": "A", "quantity": 2, "unit_price": "0.10"},
            {"sku": "B", "quantity": 1, "unit_price": "100"},
        ],
        "currency": "EUR",
    }
    body.update(fields)
    return OrderRequest.model_validate_json(json.dumps(body))


def test_the_fingerprint_is_of_the_validated_body_not_its_bytes() -> None:
    spelt_otherwise = OrderRequest.model_validate_json(
        '{ "currency" : "EUR",\n  "items": [{"unit_price": "0.1", "quantity": 2, "sku": "A"},'
        ' {"sku": "B", "unit_price": "100.0000", "quantity": 1}], "customer_id": "c-1" }'
    )
    assert fingerprint(spelt_otherwise) == fingerprint(order())
    assert len(fingerprint(order())) == 32


@pytest.mark.parametrize(
    "changed",
    [
        {"customer_id": "c-2"},
        {"currency": "USD"},
        {"items": [{"sku": "A", "quantity": 2, "unit_price": "0.11"}]},
        # Item order is part of the order.
        {
            "items": [
                {"sku": "B", "quantity": 1, "unit_price": "100"},
                {"sku": "A", "quantity": 2, "unit_price": "0.10"},
            ]
        },
    ],
)
def test_another_body_has_another_fingerprint(changed: dict[str, Any]) -> None:
    assert fingerprint(order(**changed)) != fingerprint(order())

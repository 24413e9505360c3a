"""The `payments` topic's wire schema: one event per charged (or refused) order.

Keyed by customer id, as the orders topic is, so a customer's payments stay on one partition in
the order charged. `source_partition`/`source_offset` name the orders record the event answers:
a downstream reader (and the tests) can check that no orders record was answered twice.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict

from app.payments.charges import Amount, Charge, ChargeRequest

Status = Literal["charged", "refused"]


class PaymentEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    order_id: uuid.UUID
    customer_id: str
    charge_key: str
    status: Status  # refused: the gateway's final answer was an error (4xx), never retried
    charge_id: uuid.UUID | None
    amount: Amount
    currency: str
    request_id: str
    source_partition: int
    source_offset: int

    @classmethod
    def of(
        cls, request: ChargeRequest, charge: Charge | None, partition: int, offset: int
    ) -> PaymentEvent:
        return cls(
            order_id=request.order_id,
            customer_id=request.customer_id,
            charge_key=request.charge_key,
            status="charged" if charge is not None else "refused",
            charge_id=charge.charge_id if charge is not None else None,
            amount=request.amount,
            currency=request.currency,
            request_id=request.request_id,
            source_partition=partition,
            source_offset=offset,
        )

    def key(self) -> bytes:
        return self.customer_id.encode()

    def value(self) -> bytes:
        return self.model_dump_json().encode()

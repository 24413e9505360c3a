"""HTTP request and response bodies (the Kafka envelope lives in app.contract)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.contract import CurrencyCode, CustomerId, OrderLine


class OrderRequest(BaseModel):
    """What a client POSTs. Unknown fields are rejected so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerId
    items: list[OrderLine] = Field(min_length=1, max_length=100)
    currency: CurrencyCode


class AcceptedOrder(BaseModel):
    order_id: uuid.UUID
    status: Literal["accepted"] = "accepted"
    partition: int
    offset: int


class ValidatedOrder(BaseModel):
    customer_id: str
    total: Decimal
    currency: str
    lines: int


class StoredOrder(BaseModel):
    order_id: uuid.UUID
    customer_id: str
    sequence: int = Field(
        description="1, 2, 3, ... in the order this customer's orders were processed"
    )
    status: Literal["processed"] = "processed"
    items: list[OrderLine]
    total: Decimal
    currency: str
    accepted_at: datetime
    processed_at: datetime
    partition: int
    offset: int


class OrderSummary(BaseModel):
    order_id: uuid.UUID
    sequence: int
    total: Decimal
    currency: str
    accepted_at: datetime


class CustomerOrdersPage(BaseModel):
    items: list[OrderSummary]
    next: str | None = Field(description="pass back as `after` for the next page; null at the end")


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[dict[str, Any]] | None = None


class Health(BaseModel):
    """A probe's answer: the status only (the probes are open to anyone)."""

    status: Literal["ok", "unavailable"]

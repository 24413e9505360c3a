"""The payment gateway's wire schemas, shared by the simulator (`gateway`) and its client.

A charge is idempotent by its `charge_key`: the payments worker derives it from the order id, so
every retry and every redo after a crash or a rebalance asks for the same charge.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

# Money travels as a decimal string ("12.50"), never a JSON number (a float on most parsers).
Amount = Annotated[Decimal, Field(gt=0), PlainSerializer(str, return_type=str)]
Text = Annotated[str, Field(min_length=1, max_length=200)]


def charge_key_for(order_id: uuid.UUID) -> str:
    """One order, one charge key, whoever asks and however often."""
    return f"order-{order_id}"


class ChargeRequest(BaseModel):
    """POST /charges."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    charge_key: Text
    order_id: uuid.UUID
    customer_id: Text
    amount: Amount
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    request_id: Text  # the original HTTP request's id, carried for the audit trail

    def same_charge(self, other: ChargeRequest) -> bool:
        """Whether `other` asks for the same money (a retry), not a different charge."""
        return (self.order_id, self.customer_id, self.amount, self.currency) == (
            other.order_id,
            other.customer_id,
            other.amount,
            other.currency,
        )


class Charge(BaseModel):
    """A charge the gateway applied; `replayed`: this answer repeats an earlier one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    charge_id: uuid.UUID
    charge_key: Text
    order_id: uuid.UUID
    customer_id: Text
    amount: Amount
    currency: str
    request_id: Text  # of the call that applied it
    charged_at: datetime
    replayed: bool = False

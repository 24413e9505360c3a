"""The simulated gateway's books, in memory: what was charged, and what callers did.

A simulator, not a payment system: a restart forgets every charge (so a test or a bench starts
one gateway per run). Pure: no I/O and no clock of its own, so it is unit-tested directly.
Beyond the charges it keeps what the tests check: how many charges each order got (two charge
keys for one order would be a double charge), each customer's charges in the order applied,
and customer overlaps (a call arriving while the same customer's previous call is still being
served: a caller that breaks per-customer order shows up here).
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime

from app.payments.charges import Charge, ChargeRequest


class ChargeConflictError(Exception):
    """The charge key was used before for a different charge (amount, currency, order)."""


class GatewayLedger:
    def __init__(self) -> None:
        self._charges: dict[str, Charge] = {}
        self._requests: dict[str, ChargeRequest] = {}
        self._per_customer: dict[str, list[uuid.UUID]] = {}
        self._per_order: Counter[uuid.UUID] = Counter()
        self._calls_per_key: Counter[str] = Counter()
        self._serving: Counter[str] = Counter()  # customers with a call being served
        self.calls = 0
        self.replays = 0
        self.conflicts = 0
        self.injected_errors = 0
        self.injected_timeouts = 0
        self.customer_overlaps = 0
        self.concurrent_calls = 0
        self.peak_concurrent_calls = 0

    def call_started(self, request: ChargeRequest) -> None:
        self.calls += 1
        self._calls_per_key[request.charge_key] += 1
        self.concurrent_calls += 1
        self.peak_concurrent_calls = max(self.peak_concurrent_calls, self.concurrent_calls)
        if self._serving[request.customer_id]:
            self.customer_overlaps += 1
        self._serving[request.customer_id] += 1

    def call_served(self, request: ChargeRequest) -> None:
        """The call's normal service time is over (a delayed answer may still be pending)."""
        self.concurrent_calls -= 1
        self._serving[request.customer_id] -= 1
        if not self._serving[request.customer_id]:
            del self._serving[request.customer_id]

    def charge(self, request: ChargeRequest, now: datetime) -> Charge:
        """Apply the charge once per key; the same key again answers the first charge, replayed.
        Raises ChargeConflictError for the same key with a different charge."""
        first = self._charges.get(request.charge_key)
        if first is not None:
            if not self._requests[request.charge_key].same_charge(request):
                self.conflicts += 1
                msg = f"charge key {request.charge_key} was used for a different charge"
                raise ChargeConflictError(msg)
            self.replays += 1
            return first.model_copy(update={"replayed": True})
        charge = Charge(
            charge_id=uuid.uuid4(),
            charge_key=request.charge_key,
            order_id=request.order_id,
            customer_id=request.customer_id,
            amount=request.amount,
            currency=request.currency,
            request_id=request.request_id,
            charged_at=now,
        )
        self._charges[request.charge_key] = charge
        self._requests[request.charge_key] = request
        self._per_customer.setdefault(request.customer_id, []).append(request.order_id)
        self._per_order[request.order_id] += 1
        return charge

    def find(self, charge_key: str) -> Charge | None:
        return self._charges.get(charge_key)

    def customer_orders(self, customer_id: str) -> list[uuid.UUID]:
        """The customer's charged orders, in the order they were charged."""
        return list(self._per_customer.get(customer_id, ()))

    def stats(self) -> dict[str, int]:
        calls_per_key = self._calls_per_key.values()
        return {
            "calls": self.calls,
            "charges": len(self._charges),
            "replays": self.replays,
            "conflicts": self.conflicts,
            "injected_errors": self.injected_errors,
            "injected_timeouts": self.injected_timeouts,
            "keys_called_more_than_once": sum(1 for n in calls_per_key if n > 1),
            "max_calls_per_key": max(calls_per_key, default=0),
            "orders_charged": len(self._per_order),
            "orders_charged_more_than_once": sum(1 for n in self._per_order.values() if n > 1),
            "customers": len(self._per_customer),
            "customer_overlaps": self.customer_overlaps,
            "peak_concurrent_calls": self.peak_concurrent_calls,
        }

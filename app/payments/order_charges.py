"""From an `orders` record to the charge it asks for: a pure rule, shared by the payments
worker, its bench and its tests.

Only orders are charged, by the order worker's own rules (app/worker/records.py): a record that
can never be an order (the order worker dead-letters it) and one appended after its acceptance
deadline (its client was answered 503: it is not an order) ask for nothing; nor does an order
whose total is zero.
"""

from __future__ import annotations

from app.contract import HEADER_REQUEST_ID
from app.errors import PoisonRecordError
from app.payments.charges import ChargeRequest, charge_key_for
from app.worker.fetch_positions import Record
from app.worker.records import in_time, parse

UNKNOWN_REQUEST = "unknown"


def charge_for(record: Record) -> ChargeRequest | None:
    try:
        envelope = parse(record)
        if not in_time(envelope, record):
            return None
    except PoisonRecordError:
        return None
    if envelope.total <= 0:
        return None
    request_id = next(
        (
            value.decode(errors="replace")
            for name, value in record.headers
            if name == HEADER_REQUEST_ID
        ),
        UNKNOWN_REQUEST,
    )
    return ChargeRequest(
        charge_key=charge_key_for(envelope.order_id),
        order_id=envelope.order_id,
        customer_id=envelope.customer_id,
        amount=envelope.total,
        currency=envelope.currency,
        request_id=request_id[:200] or UNKNOWN_REQUEST,  # the schema bounds it
    )

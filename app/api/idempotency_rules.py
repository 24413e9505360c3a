"""The rules of Idempotency-Key on POST /orders, as the IETF draft "The Idempotency-Key HTTP
Header Field" (draft-ietf-httpapi-idempotency-key-header) specifies it; no I/O here (the store
that applies them is app.api.idempotency).

Per client (the token's, app/auth) and key, PostgreSQL (shared by every API process) remembers
a fingerprint of the first request and its answer. A key's row moves through these states:

    absent or expired --claim--> in_flight --202--> completed    same body: that 202 again
                                     |
                                     +--503--> failed             same body: produce again
                                     +--lease ran out--> (as failed: the API process died)

- same key, same body, completed: the same answer (order id, partition, offset), nothing produced;
- same key, same body, failed or in flight past its lease: produced again WITH THE SAME order id;
  the worker stores an order id once, so if the first attempt reached the log too, the order is
  still stored once;
- same key, same body, in flight within its lease: 409, retry later;
- same key, different body: 422, whatever the state (retrying cannot help);
- an expired key is a new key: new fingerprint, new order id.

The lease is not what keeps an order single (the worker's order-id check is); it only chooses
between answering 409 and producing again, so it spans the longest a live request can hold a key:
the acknowledgement deadline, its grace, and the write that remembers the answer.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel

from app.auth import Principal
from app.db.idempotency_keys import RememberedKey


class Decision(StrEnum):
    NEW = "new"  # unknown or expired: a new order id
    REPLAY = "replay"  # answered 202 before: that answer again
    RETRY = "retry"  # answered 503, or abandoned: produce again with the same order id
    IN_FLIGHT = "in_flight"  # 409
    MISMATCH = "mismatch"  # 422


def decide(remembered: RememberedKey | None, fingerprint: bytes, now: datetime) -> Decision:
    """What a request with this key and body gets, given what is remembered (the pure rule)."""
    if remembered is None:
        return Decision.NEW
    held = remembered.state == "in_flight" and remembered.lease_until > now
    # A key is forgotten once expired, but never while a live request holds it.
    if remembered.expires_at <= now and not held:
        return Decision.NEW
    if remembered.fingerprint != fingerprint:
        return Decision.MISMATCH
    if remembered.state == "completed":
        return Decision.REPLAY
    return Decision.IN_FLIGHT if held else Decision.RETRY


def client_scope(principal: Principal) -> str:
    """Whose keys these are: the authenticated client's (issuer, client id and subject), so one
    client's keys never collide with another's, as the draft asks. Hashed: the scope is part of
    the table's primary key, and a token's claims may be long or hold characters (NUL) that a
    PostgreSQL text value cannot."""
    return hashlib.sha256(principal.client_key.encode()).hexdigest()


def fingerprint(body: BaseModel) -> bytes:
    """SHA-256 of the validated body in a canonical form, not of its bytes.

    Whitespace, member order and how an amount is spelt ("0.10", "0.1") do not change it;
    an omitted field and its default are the same. Item order does: it is part of the order.
    """
    canonical = json.dumps(
        body.model_dump(exclude_defaults=True),
        default=_canonical_decimal,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).digest()


def _canonical_decimal(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value.normalize()) if value else "0"
    msg = f"no canonical form for {type(value).__name__}"
    raise TypeError(msg)

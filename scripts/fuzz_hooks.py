"""Schemathesis hooks for `make fuzz` (scripts/fuzz.py): what the schema cannot say, said here.

1. An Idempotency-Key is state, not syntax: the same key with another body is refused (422), as
   the IETF draft asks. Generated keys repeat ("0", "00", ...), so two valid requests would share
   one and the second be refused. A valid key in a valid request is made unique (a random suffix,
   or the tail replaced when there is no room, so 200-character keys stay 200), its first
   character kept: it still matches the schema, and every request is the first with its key.
   Invalid requests are sent as generated.
2. 202 means accepted, not stored: a worker stores the order a moment later, and until then
   GET /orders/{id} answers 404 (documented). After every 202 this waits until the order is
   readable, and fails the case if it is not within STORE_TIMEOUT_S. So each accepted order is
   checked to be storable, and ensure_resource_availability (the stateful phase follows the
   Location of POST /orders to GET /orders/{order_id}) checks an order that is there. It reads
   with the run's service token (FUZZ_TOKEN, made by scripts/fuzz.py), as schemathesis does.
3. GET /analytics/revenue's `to` must come after `from`, by at most 31 days, and both must be
   instants UTC can hold: a relation between two parameters, which OpenAPI cannot state. A valid
   request's pair is made to hold it (`to` moved to one hour after `from`; a `from` outside what
   UTC can hold replaced by a fixed instant, its written offset kept); invalid requests are sent
   as generated, and a pair that already holds is left alone.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis

API = os.environ.get("FUZZ_API", "http://127.0.0.1:8000")
AUTHORIZATION = {"Authorization": f"Bearer {os.environ.get('FUZZ_TOKEN', '')}"}
KEY = "Idempotency-Key"
MAX_KEY = 200
STORE_TIMEOUT_S = 30.0


def _accepting_orders(case: Any) -> bool:
    return bool(case.method.upper() == "POST" and case.operation.path == "/orders")


def _revenue_span(case: Any) -> bool:
    return bool(case.method.upper() == "GET" and case.operation.path == "/analytics/revenue")


def _instant(text: object) -> datetime | None:
    """The query value as an aware datetime UTC can hold, or None."""
    if not isinstance(text, str):
        return None
    try:
        value = datetime.fromisoformat(text)
        value.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return value if value.tzinfo is not None else None


def _hold_the_span(query: dict[str, Any]) -> None:
    start = _instant(query.get("from"))
    if start is None or start.astimezone(UTC) > datetime(9999, 12, 30, tzinfo=UTC):
        start = datetime(2026, 11, 27, tzinfo=UTC)
        query["from"] = start.isoformat()
    end = _instant(query.get("to"))
    if end is None or not timedelta(0) < end - start <= timedelta(days=31):
        query["to"] = (start + timedelta(hours=1)).isoformat()


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if _revenue_span(case) and positive and isinstance(case.query, dict):
        _hold_the_span(case.query)
    if not _accepting_orders(case) or case.meta is None:
        return
    headers = case.headers or {}
    key = headers.get(KEY)
    if not case.meta.generation.mode.is_positive or not isinstance(key, str) or not key:
        return
    suffix = f"-{uuid.uuid4().hex}"
    keep = max(1, min(len(key), MAX_KEY - len(suffix)))
    headers[KEY] = key[:keep] + suffix


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    if not _accepting_orders(case) or response.status_code != 202:
        return
    location = response.headers.get("location") or response.headers.get("Location")
    if isinstance(location, list):
        location = location[0]
    deadline = time.monotonic() + STORE_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            read = urllib.request.Request(f"{API}{location}", headers=AUTHORIZATION)
            with urllib.request.urlopen(read, timeout=5) as stored:
                if stored.status == 200:
                    return
        except urllib.error.HTTPError as refused:
            if refused.code != 404:
                raise
        time.sleep(0.05)
    msg = f"order {location} was accepted (202) but not stored within {STORE_TIMEOUT_S}s"
    raise AssertionError(msg)

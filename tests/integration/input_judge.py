"""What the documented rules say a request or a record is: the judge the app is held to.

Written from the README, the OpenAPI descriptions and app/free_text.py's docstring, not by
calling app.contract, so that the app's own validation is checked rather than repeated:
- customer_id: 1 to 64 of ASCII letters, digits and . _ : @ -;
- sku: 1 to 64 code points, none of C0, DEL, C1, surrogates, U+2028-U+2029, the bidi
  embeddings/overrides/isolates U+202A-U+202E and U+2066-U+2069, U+FEFF;
- quantity: a JSON number whose value is an integer 1 to 10,000 (78.0 is 78; true is not);
- unit_price: a string of 1 to 10 ASCII digits, optionally a point and 1 to 4 more;
- currency: an ISO 4217 code; items: 1 to 100 lines; no member missing, none extra;
- the body is UTF-8 JSON (no NaN; a byte order mark: see parse_json) of at most
  API_MAX_BODY_BYTES, sent as application/json; Idempotency-Key and X-Request-ID, when sent,
  hold 1 to 200 characters.
A record on the topic is a v1 envelope: the same order, plus schema_version 1 (or none: the
contract defaults it), an order_id UUID, the exact total, and two timezone-aware ISO 8601
instants.
"""

from __future__ import annotations

import json
import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import pycountry

CUSTOMER_ID = re.compile(r"[A-Za-z0-9._:@-]{1,64}")
AMOUNT = re.compile(r"[0-9]{1,10}(\.[0-9]{1,4})?")
CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
CURRENCIES = frozenset(currency.alpha_3 for currency in pycountry.currencies)
MAX_HEADER_CHARACTERS = 200
ENVELOPE_MEMBERS = {
    "schema_version",
    "order_id",
    "customer_id",
    "items",
    "total",
    "currency",
    "accepted_at",
    "accept_by",
}


class Refused(Exception):
    """Why the rules refuse a value (the judge's verdict, for assertion messages)."""


def parse_json(data: bytes | None, *, bom: bool) -> Any:
    """JSON text in UTF-8. RFC 8259 lets a parser ignore a leading byte order mark or refuse
    it: `bom` says which this side does (the API ignores one, the workers refuse it)."""
    if data is None:
        raise Refused("no value")
    if data.startswith(b"\xef\xbb\xbf"):
        if not bom:
            raise Refused("byte order mark")
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused("not UTF-8") from exc

    def no_constants(name: str) -> Any:
        raise Refused(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:  # also ints past Python's 4,300 digits
        raise Refused(f"not JSON: {exc}"[:200]) from exc


def _members(value: Any, names: set[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Refused(f"{what} is not an object")
    if set(value) != names:
        raise Refused(f"{what} members {sorted(map(ascii, value))}")
    return value


def free_text_refuses(character: str) -> bool:
    code = ord(character)
    return (
        unicodedata.category(character) in ("Cc", "Cs")
        or 0x2028 <= code <= 0x202E
        or 0x2066 <= code <= 0x2069
        or code == 0xFEFF
    )


def customer_id(value: Any) -> str:
    if not isinstance(value, str) or CUSTOMER_ID.fullmatch(value) is None:
        raise Refused(f"customer_id {value!a}")
    return value


def sku(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 64:
        raise Refused(f"sku {value!a}")
    if any(free_text_refuses(c) for c in value):
        raise Refused(f"sku {value!a} holds a refused character")
    return value


def quantity(value: Any) -> int:
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int or not 1 <= value <= 10_000:
        raise Refused(f"quantity {value!a}"[:100])
    return value


def unit_price(value: Any) -> Decimal:
    if not isinstance(value, str) or AMOUNT.fullmatch(value) is None:
        raise Refused(f"unit_price {value!a}"[:100])
    return Decimal(value)


def currency(value: Any) -> str:
    if not isinstance(value, str) or value not in CURRENCIES:
        raise Refused(f"currency {value!a}")
    return value


@dataclass(frozen=True)
class Line:
    sku: str
    quantity: int
    unit_price: Decimal


@dataclass(frozen=True)
class Order:
    customer_id: str
    lines: tuple[Line, ...]
    currency: str

    @property
    def total(self) -> Decimal:
        return sum((line.unit_price * line.quantity for line in self.lines), Decimal(0))


def order(value: Any) -> Order:
    members = _members(value, {"customer_id", "items", "currency"}, "order")
    items = members["items"]
    if not isinstance(items, list) or not 1 <= len(items) <= 100:
        raise Refused("items is not a list of 1 to 100 lines")
    lines = []
    for item in items:
        line = _members(item, {"sku", "quantity", "unit_price"}, "line")
        lines.append(
            Line(sku(line["sku"]), quantity(line["quantity"]), unit_price(line["unit_price"]))
        )
    return Order(customer_id(members["customer_id"]), tuple(lines), currency(members["currency"]))


def header(value: bytes | None, name: str) -> None:
    # The server reads a header value as ISO-8859-1, one character per byte.
    if value is not None and not 0 < len(value) <= MAX_HEADER_CHARACTERS:
        raise Refused(f"{name} of {len(value)} characters")


def request(
    body: bytes, content_type: str | None, headers: dict[str, bytes], max_body_bytes: int
) -> Order:
    """The order a POST /orders carries, or Refused: the API must then answer 4xx."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise Refused(f"content type {content_type!a}")
    if len(body) > max_body_bytes:
        raise Refused(f"body of {len(body)} bytes")
    header(headers.get("Idempotency-Key"), "Idempotency-Key")
    header(headers.get("X-Request-ID"), "X-Request-ID")
    return order(parse_json(body, bom=True))


@dataclass(frozen=True)
class Envelope:
    order_id: uuid.UUID
    order: Order
    accept_by: datetime


def _instant(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise Refused(f"{name} {value!a}")
    try:
        instant = datetime.fromisoformat(value)
    except ValueError as exc:
        raise Refused(f"{name} {value!a}") from exc
    if instant.tzinfo is None:
        raise Refused(f"{name} {value!a} has no offset")
    try:
        instant.astimezone(UTC)
    except OverflowError as exc:
        raise Refused(f"{name} {value!a} is outside years 1 to 9999 in UTC") from exc
    return instant


def envelope(value: bytes | None) -> Envelope:
    """The order a record carries, or Refused: the workers must then set it aside."""
    parsed = parse_json(value, bom=False)
    if isinstance(parsed, dict):  # the contract reads an envelope without a version as v1
        parsed = {"schema_version": 1, **parsed}
    members = _members(parsed, ENVELOPE_MEMBERS, "envelope")
    version = members["schema_version"]
    if type(version) is not int or version != 1:
        raise Refused(f"schema_version {version!a}")
    order_id = members["order_id"]
    if not isinstance(order_id, str) or CANONICAL_UUID.fullmatch(order_id) is None:
        raise Refused(f"order_id {order_id!a}")
    found = order({k: v for k, v in members.items() if k in ("customer_id", "items", "currency")})
    total = members["total"]
    try:
        exact = type(total) in (str, int) and Decimal(total) == found.total
    except InvalidOperation:
        exact = False
    if not exact:
        raise Refused(f"total {total!a}")
    _instant(members["accepted_at"], "accepted_at")
    return Envelope(uuid.UUID(order_id), found, _instant(members["accept_by"], "accept_by"))

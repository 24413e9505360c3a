"""The wire contract: what the API writes to Kafka and the worker reads back.

Both sides import this one module, so the schema cannot drift between producer and consumer.
A record value is a versioned JSON envelope; the headers repeat the content type and schema
version so tools (and a future v2 worker) can route records without parsing the body, name the
request (`request-id`), and, with tracing on, carry `traceparent` (W3C Trace Context).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Final, Literal

import pycountry
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from uuid_utils.compat import uuid7

from app import free_text, money
from app.errors import PoisonRecordError

SCHEMA_VERSION: Final = 1
CONTENT_TYPE = "application/json"

HEADER_CONTENT_TYPE = "content-type"
HEADER_SCHEMA_VERSION = "schema-version"
HEADER_REQUEST_ID = "request-id"
# Optional: W3C Trace Context of the API's producer span, only while tracing is on (app.tracing).
# No reader requires them or refuses a record for them; the worker links its batch span to them.
HEADER_TRACEPARENT = "traceparent"
HEADER_TRACESTATE = "tracestate"

# Lengths count Unicode code points (characters), as JSON Schema's maxLength does: 64 ok, 65 not.
CustomerId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._:@-]+$",
        description="1 to 64 characters: ASCII letters, digits and . _ : @ -",
    ),
]
# The character rule is app.free_text's: checked by its function, for an error that names the
# character; carried in the schema as its pattern (tests/unit/test_free_text.py: they agree).
Sku = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        description="1 to 64 characters (Unicode code points); no control characters, "
        "surrogates, line separators, bidi embeddings/overrides/isolates or U+FEFF",
        json_schema_extra={"pattern": free_text.PATTERN},
    ),
    AfterValidator(free_text.free_text),
]
Money = Annotated[
    Decimal,
    BeforeValidator(money.parse_amount),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": money.PATTERN,
            "description": "a decimal string: 1 to 10 digits, optionally a point and 1 to 4 "
            "more; no sign, no exponent (not a JSON number)",
            "examples": ["0.10", "19.99"],
        }
    ),
]

# ISO 4217 codes from pycountry, looked up in a frozenset: every request and every record checks
# one, and this is several times cheaper than a per-call pycountry lookup.
ISO_4217_CODES = frozenset(currency.alpha_3 for currency in pycountry.currencies)


def _known_currency(code: str) -> str:
    if code not in ISO_4217_CODES:
        msg = f"{code!r} is not an ISO 4217 currency code"
        raise ValueError(msg)
    return code


CurrencyCode = Annotated[
    str,
    Field(
        min_length=3,
        max_length=3,
        examples=["EUR", "USD"],
        json_schema_extra={"enum": sorted(ISO_4217_CODES)},
    ),
    AfterValidator(_known_currency),
]


def _integral(value: object) -> object:
    # JSON Schema's `integer` is a value, not a spelling: 78.0 is the integer 78 there, and no
    # schema can say otherwise. Strings, booleans and fractions stay refused (strict below).
    if type(value) is float and value.is_integer():
        return int(value)
    return value


Quantity = Annotated[int, Field(ge=1, le=10_000, strict=True), BeforeValidator(_integral)]


class OrderLine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sku: Sku
    quantity: Quantity
    unit_price: Money


def _representable_in_utc(instant: datetime) -> datetime:
    """An instant whose UTC value exists in Python's calendar (years 1 to 9999).

    `0001-01-01T00:00:00+01:00` is a valid ISO 8601 instant, but in UTC it falls in year 0:
    PostgreSQL would store it, and every read of it would fail in the driver.
    """
    try:
        instant.astimezone(UTC)
    except OverflowError as exc:
        msg = f"{instant.isoformat()} is outside the years 1 to 9999 once in UTC"
        raise ValueError(msg) from exc
    return instant


# Every instant on the wire has an offset, and stays in range when converted to UTC.
Instant = Annotated[AwareDatetime, AfterValidator(_representable_in_utc)]


class OrderEnvelope(BaseModel):
    """Schema version 1 of an accepted order, as it travels on the `orders` topic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    order_id: uuid.UUID
    customer_id: CustomerId
    items: tuple[OrderLine, ...] = Field(min_length=1, max_length=100)
    total: Decimal
    currency: CurrencyCode
    accepted_at: Instant
    # The API's acknowledgement deadline. The broker stamps each record with its append time
    # (the topic uses LogAppendTime); a record appended after this instant was answered 503,
    # and is never processed. Both sides apply the same rule to the same two timestamps.
    accept_by: Instant

    @model_validator(mode="after")
    def _total_matches_items(self) -> OrderEnvelope:
        if self.total != order_total(self.items):
            msg = f"total {self.total} does not equal the sum of the items"
            raise ValueError(msg)
        return self

    @property
    def key(self) -> bytes:
        """The record key: the customer id, so one customer's orders share a partition."""
        return self.customer_id.encode()


# Kafka's record timestamp types (RecordMetadata / ConsumerRecord `timestamp_type`).
LOG_APPEND_TIME = 1


def appended_in_time(envelope: OrderEnvelope, timestamp_ms: int, timestamp_type: int) -> bool:
    """Whether the broker appended this order before its acceptance deadline.

    Only a broker-stamped (LogAppendTime) timestamp decides; a producer's own timestamp says
    nothing about when the broker took the record, so such records are taken as in time.
    """
    if timestamp_type != LOG_APPEND_TIME:
        return True
    return timestamp_ms <= int(envelope.accept_by.timestamp() * 1000)


def order_total(items: tuple[OrderLine, ...] | list[OrderLine]) -> Decimal:
    """Sum of quantity x unit price, in exact decimal arithmetic (never floats for money)."""
    return sum((line.unit_price * line.quantity for line in items), Decimal(0))


def new_order_id() -> uuid.UUID:
    """A new order id: a random UUIDv7, for orders with and without an Idempotency-Key alike.

    Never derived from the request: an id computed from (customer, key) under a public
    namespace let anyone who guessed a key pre-empt the customer's order, and made a retry
    with another body look like the first order (the worker dropped it as a duplicate). The
    API remembers a keyed order's id instead (app/api/idempotency.py).

    UUIDv7 is time-ordered, so the orders table's primary key index grows at its right edge
    instead of taking random page splits, and made in ~1 us (uuid-utils, Rust) where
    `uuid.uuid4()` takes ~2.5 us on the API's hot path (a getrandom system call each).
    """
    return uuid7()


def encode(
    envelope: OrderEnvelope, request_id: str, trace: Sequence[tuple[str, bytes]] = ()
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The record value and headers for an envelope; `trace`: the W3C trace context header
    (HEADER_TRACEPARENT), only when tracing is on (app.tracing)."""
    headers = [*_V1_HEADERS, (HEADER_REQUEST_ID, request_id.encode()), *trace]
    return envelope.model_dump_json().encode(), headers


_V1_HEADERS = (
    (HEADER_CONTENT_TYPE, CONTENT_TYPE.encode()),
    (HEADER_SCHEMA_VERSION, str(SCHEMA_VERSION).encode()),
)


def decode(value: bytes | None) -> OrderEnvelope:
    """Parse a record value; anything that is not a valid v1 envelope is a poison record."""
    if value is None:
        msg = "record has no value (tombstone)"
        raise PoisonRecordError(msg)
    try:
        return OrderEnvelope.model_validate_json(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "value"
        msg = f"not a v{SCHEMA_VERSION} order envelope: {where}: {first['msg']}"
        raise PoisonRecordError(msg) from exc

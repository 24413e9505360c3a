"""POST /orders (to Kafka, 202 after acks=all) and GET /orders/{id} (from PostgreSQL).

Every route needs a bearer token (app/api/authn.py): `orders:write` to place or validate an
order, `orders:read` to read one. A customer's token acts for its own customer only.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import uuid_utils
from fastapi import APIRouter, HTTPException, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.convertors import Convertor, register_url_convertor

from app import contract
from app.api.authn import BearerRoute, bearer, principal_of
from app.api.deps import ConnectionDep, PrincipalDep, idempotency_keys_of, publisher_of
from app.api.idempotency_rules import client_scope, fingerprint
from app.api.intake import intake_of
from app.api.problems import problem_responses
from app.api.schemas import AcceptedOrder, OrderRequest, StoredOrder, ValidatedOrder
from app.auth import READ, WRITE, OtherCustomerError
from app.batching import Delivery
from app.db import queries

router = APIRouter(tags=["orders"], route_class=BearerRoute)

MAX_HEADER_LENGTH = 200

# What optional_header accepts, as a schema: the value as the server sees it (one character per
# byte, ISO-8859-1), 1 to 200 of them. The pattern holds what the HTTP parser lets through:
# visible ASCII and bytes 0x80-0xFF, with spaces and tabs inside or at the end (leading ones are
# stripped before the app sees them), no other control characters (the parser answers 400).
HEADER_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_HEADER_LENGTH,
    "pattern": "^[\\u0021-\\u007e\\u0080-\\u00ff][\\u0009\\u0020-\\u007e\\u0080-\\u00ff]*$",
    "description": f"1 to {MAX_HEADER_LENGTH} characters, one per byte (ISO-8859-1)",
}

# The two optional headers of POST /orders, read straight from the request: declared as FastAPI
# `Header()` parameters they cost ~60 us of parameter solving per request (measured with
# `make bench-ingress`), a third of what validating the whole body costs. OpenAPI still lists them.
# For the same reason the route takes no FastAPI dependency at all: its bearer token is checked by
# a plain call in BearerRoute's handler, and its principal read with principal_of(request).
ORDER_HEADERS: list[dict[str, Any]] = [
    {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Retrying with the same key (and customer) and the same body yields the "
        "same answer and one order; the same key with another body gets 422, and 409 while "
        "the first request is still being answered. Remembered for API_IDEMPOTENCY_RETENTION_S.",
        "schema": HEADER_SCHEMA,
    },
    {
        "name": "X-Request-ID",
        "in": "header",
        "required": False,
        "description": "Carried in the Kafka record's headers; one is made up when absent.",
        "schema": HEADER_SCHEMA,
    },
]


_HEADER_VALUE = re.compile(HEADER_SCHEMA["pattern"])


def optional_header(request: Request, name: str) -> str | None:
    """The header's value as HEADER_SCHEMA says, enforced here rather than left to whichever
    HTTP parser runs in front (a NUL let through would reach PostgreSQL as a key); sent twice,
    it is refused: a proxy joining the two would turn a retry into another key."""
    value = request.headers.get(name)
    if value is None:
        return None
    if not 0 < len(value) <= MAX_HEADER_LENGTH:
        _refuse_header(name, value, f"{name} must be 1 to {MAX_HEADER_LENGTH} characters")
    if not _HEADER_VALUE.fullmatch(value):
        _refuse_header(name, value, f"{name} has a character outside {HEADER_SCHEMA['pattern']}")
    if len(request.headers.getlist(name)) > 1:
        _refuse_header(name, value, f"{name} may be sent once")
    return value


def _refuse_header(name: str, value: str, msg: str) -> None:
    raise RequestValidationError(
        [{"loc": ("header", name), "msg": msg, "type": "value_error", "input": value}]
    )


@router.post(
    "/orders",
    status_code=202,
    response_model=AcceptedOrder,
    responses={
        202: {"description": "Kafka acknowledged the order (acks=all); a worker will store it"},
        **problem_responses(400, 401, 403, 409, 413, 415, 422, 429, 503, idempotency_key=True),
    },
    openapi_extra={"parameters": ORDER_HEADERS, **bearer(WRITE)},
)
async def accept_order(order: OrderRequest, request: Request) -> Response:
    """Accept an order: answered only after every in-sync replica has it.

    Needs `orders:write`; a customer's token may place orders for its own customer only (403).
    """
    # Before any work: 503 while intake is paused or unknown (app/api/intake.py), and counted
    # until answered, so that a pause waits for every order let in.
    with intake_of(request):
        return await _accept(order, request)


async def _accept(order: OrderRequest, request: Request) -> Response:
    principal = principal_of(request)
    if not principal.acts_for(order.customer_id):
        raise OtherCustomerError
    idempotency_key = optional_header(request, "Idempotency-Key")
    request_id = optional_header(request, "X-Request-ID") or str(uuid_utils.uuid7())
    if idempotency_key is None:  # never touches PostgreSQL: validate, produce, answer
        order_id = contract.new_order_id()
        ack = await place(order, order_id, request, request_id)
        return accepted(order_id, ack.partition, ack.offset)

    keys = idempotency_keys_of(request)
    claim = await keys.claim(client_scope(principal), idempotency_key, fingerprint(order))
    if claim.answer is not None:  # answered 202 before: the same answer, nothing produced
        return accepted(claim.order_id, *claim.answer)
    try:
        ack = await place(order, claim.order_id, request, request_id)
    except Exception:
        await keys.fail(claim)  # a retry produces again, with the same order id
        raise
    return accepted(claim.order_id, *await keys.complete(claim, ack.partition, ack.offset))


async def place(
    order: OrderRequest, order_id: uuid.UUID, request: Request, request_id: str
) -> Delivery:
    """Produce the order and wait for acks=all (BrokerUnavailableError otherwise)."""
    publisher = publisher_of(request)
    items = tuple(order.items)
    accepted_at = datetime.now(UTC)
    envelope = contract.OrderEnvelope(
        order_id=order_id,
        customer_id=order.customer_id,
        items=items,
        total=contract.order_total(items),
        currency=order.currency,
        accepted_at=accepted_at,
        accept_by=publisher.acceptance_deadline(accepted_at),
    )
    return await publisher.publish(envelope, request_id)


def accepted(order_id: uuid.UUID, partition: int, offset: int) -> Response:
    body = AcceptedOrder(order_id=order_id, partition=partition, offset=offset)
    return json_response(body, 202, Location=f"/orders/{order_id}")


@router.post(
    "/orders/validate",
    response_model=ValidatedOrder,
    responses=problem_responses(400, 401, 403, 413, 415, 422, 429, 503),
    openapi_extra=bearer(WRITE),
)
async def validate_order(order: OrderRequest, request: Request) -> Response:
    """Dry run: validate an order and price it, without placing it (nothing reaches Kafka).

    Needs `orders:write`, and a customer's token only validates its own customer's orders, as
    POST /orders. It also serves as the ingress benchmark's baseline: the same token check, the
    same body, the same validation, the same kind of response, and no Kafka.
    """
    if not principal_of(request).acts_for(order.customer_id):
        raise OtherCustomerError
    validated = ValidatedOrder(
        customer_id=order.customer_id,
        total=contract.order_total(order.items),
        currency=order.currency,
        lines=len(order.items),
    )
    return json_response(validated, 200)


def json_response(body: BaseModel, status: int, **headers: str) -> Response:
    # The hot paths serialise their (already typed) model directly: FastAPI would otherwise
    # re-validate the returned model against `response_model`, which costs more than the
    # serialisation itself. `response_model` still documents the body in OpenAPI.
    return Response(body.model_dump_json(), status, headers, media_type="application/json")


ORDER_ID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


class OrderIdConvertor(Convertor[uuid.UUID]):
    """An order id in the path, in its canonical form only (what Location gives).

    Matched by the router, so `GET /orders/validate` is not this route with a bad id (422) but
    an undeclared method of `/orders/validate` (405), and any other path is 404, like any path
    without a route. uuid.UUID alone would also take bare hex, braces and "urn:uuid:".
    """

    regex = ORDER_ID

    def convert(self, value: str) -> uuid.UUID:
        return uuid.UUID(value)

    def to_string(self, value: uuid.UUID) -> str:
        return str(value)


register_url_convertor("order_id", OrderIdConvertor())
OrderIdPath = Annotated[uuid.UUID, Path(json_schema_extra={"pattern": f"^{ORDER_ID}$"})]


@router.get(
    "/orders/{order_id:order_id}",
    response_model=StoredOrder,
    # 422 never comes (the router only routes a well-formed id), but FastAPI would list its own.
    responses=problem_responses(400, 401, 403, 404, 422, 429, 503),
    openapi_extra=bearer(READ),
)
async def get_order(
    order_id: OrderIdPath, connection: ConnectionDep, principal: PrincipalDep
) -> StoredOrder:
    """The order as the worker stored it; 404 until a worker has processed it.

    Needs `orders:read`. Another customer's order is 404 to a customer's token, exactly as an
    unknown id: a 403 would tell that the id exists (OWASP API1, object-level authorization).
    """
    row = await queries.find_order(connection, order_id)
    if row is None or not principal.acts_for(row["customer_id"]):
        raise HTTPException(404, "Order not found (unknown, or not processed yet)")
    return StoredOrder(**row, partition=row["kafka_partition"], offset=row["kafka_offset"])

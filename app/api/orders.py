"""POST /orders (to Kafka, 202 after acks=all) and GET /orders/{id} (from PostgreSQL)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import uuid_utils
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from app import contract
from app.api.deps import ConnectionDep, publisher_of
from app.api.problems import problem_responses
from app.api.schemas import AcceptedOrder, OrderRequest, StoredOrder, ValidatedOrder
from app.db import queries

router = APIRouter(tags=["orders"])

MAX_HEADER_LENGTH = 200

# The two optional headers of POST /orders, read straight from the request: declared as FastAPI
# `Header()` parameters they cost ~60 us of parameter solving per request (measured with
# `make bench-ingress`), a third of what validating the whole body costs. OpenAPI still lists them.
ORDER_HEADERS: list[dict[str, Any]] = [
    {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Retrying with the same key (and customer) yields the same order.",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_HEADER_LENGTH},
    },
    {
        "name": "X-Request-ID",
        "in": "header",
        "required": False,
        "description": "Carried in the Kafka record's headers; one is made up when absent.",
        "schema": {"type": "string", "maxLength": MAX_HEADER_LENGTH},
    },
]


def optional_header(request: Request, name: str) -> str | None:
    value = request.headers.get(name)
    if value is not None and not 0 < len(value) <= MAX_HEADER_LENGTH:
        msg = f"{name} must be 1 to {MAX_HEADER_LENGTH} characters"
        raise RequestValidationError(
            [{"loc": ("header", name), "msg": msg, "type": "string_length", "input": value}]
        )
    return value


@router.post(
    "/orders",
    status_code=202,
    response_model=AcceptedOrder,
    responses={
        202: {"description": "Kafka acknowledged the order (acks=all); a worker will store it"},
        **problem_responses(413, 415, 422, 503),
    },
    openapi_extra={"parameters": ORDER_HEADERS},
)
async def accept_order(order: OrderRequest, request: Request) -> Response:
    """Accept an order: answered only after every in-sync replica has it."""
    idempotency_key = optional_header(request, "Idempotency-Key")
    request_id = optional_header(request, "X-Request-ID")
    publisher = publisher_of(request)
    items = tuple(order.items)
    accepted_at = datetime.now(UTC)
    envelope = contract.OrderEnvelope(
        order_id=contract.order_id_for(order.customer_id, idempotency_key),
        customer_id=order.customer_id,
        items=items,
        total=contract.order_total(items),
        currency=order.currency,
        accepted_at=accepted_at,
        accept_by=publisher.acceptance_deadline(accepted_at),
    )
    ack = await publisher.publish(envelope, request_id or str(uuid_utils.uuid7()))
    accepted = AcceptedOrder(order_id=envelope.order_id, partition=ack.partition, offset=ack.offset)
    return json_response(accepted, 202, Location=f"/orders/{envelope.order_id}")


@router.post(
    "/orders/validate",
    response_model=ValidatedOrder,
    responses=problem_responses(413, 415, 422),
)
async def validate_order(order: OrderRequest) -> Response:
    """Dry run: validate an order and price it, without placing it (nothing reaches Kafka).

    It also serves as the ingress benchmark's baseline: the same body, the same validation,
    the same kind of response, and no Kafka.
    """
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


@router.get(
    "/orders/{order_id}",
    response_model=StoredOrder,
    responses=problem_responses(404, 422, 503),
)
async def get_order(order_id: uuid.UUID, connection: ConnectionDep) -> StoredOrder:
    """The order as the worker stored it; 404 until a worker has processed it."""
    row = await queries.find_order(connection, order_id)
    if row is None:
        raise HTTPException(404, "Order not found (unknown, or not processed yet)")
    return StoredOrder(**row, partition=row["kafka_partition"], offset=row["kafka_offset"])

"""POST /orders (to Kafka, 202 after acks=all) and GET /orders/{id} (from PostgreSQL)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Response

from app import contract
from app.api.deps import ConnectionDep, PublisherDep
from app.api.problems import problem_responses
from app.api.schemas import AcceptedOrder, OrderRequest, StoredOrder, ValidatedOrder
from app.db import queries

router = APIRouter(tags=["orders"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Retrying with the same key (and customer) yields the same order, never two.",
    ),
]
RequestId = Annotated[str | None, Header(alias="X-Request-ID", max_length=200)]


@router.post(
    "/orders",
    status_code=202,
    response_model=AcceptedOrder,
    responses={
        202: {"description": "Kafka acknowledged the order (acks=all); a worker will store it"},
        **problem_responses(413, 415, 422, 503),
    },
)
async def accept_order(
    order: OrderRequest,
    response: Response,
    publisher: PublisherDep,
    idempotency_key: IdempotencyKey = None,
    request_id: RequestId = None,
) -> AcceptedOrder:
    """Accept an order: answered only after every in-sync replica has it."""
    items = tuple(order.items)
    envelope = contract.OrderEnvelope(
        order_id=contract.order_id_for(order.customer_id, idempotency_key),
        customer_id=order.customer_id,
        items=items,
        total=contract.order_total(items),
        currency=order.currency,
        accepted_at=datetime.now(UTC),
    )
    ack = await publisher.publish(envelope, request_id or uuid.uuid4().hex)
    response.headers["Location"] = f"/orders/{envelope.order_id}"
    return AcceptedOrder(order_id=envelope.order_id, partition=ack.partition, offset=ack.offset)


@router.post(
    "/orders/validate",
    response_model=ValidatedOrder,
    responses=problem_responses(413, 415, 422),
)
async def validate_order(order: OrderRequest) -> ValidatedOrder:
    """Dry run: validate an order and price it, without placing it (nothing reaches Kafka)."""
    return ValidatedOrder(
        customer_id=order.customer_id,
        total=contract.order_total(order.items),
        currency=order.currency,
        lines=len(order.items),
    )


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

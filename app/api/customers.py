"""GET /customers/{id}/orders: one customer's orders in the order they were processed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import ConnectionDep
from app.api.problems import problem_responses
from app.api.schemas import CustomerOrdersPage, OrderSummary
from app.contract import CustomerId
from app.db import queries

router = APIRouter(tags=["customers"])


@router.get(
    "/customers/{customer_id}/orders",
    response_model=CustomerOrdersPage,
    responses=problem_responses(422, 503),
)
async def list_customer_orders(
    customer_id: CustomerId,
    connection: ConnectionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    # [0-9], not \d: Rust's regex (pydantic's) takes any Unicode digit ("٣") for \d.
    after: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,18}$", description="a `next` cursor")
    ] = None,
) -> CustomerOrdersPage:
    rows = await queries.customer_orders(connection, customer_id, int(after or 0), limit + 1)
    page = [OrderSummary(**row) for row in rows[:limit]]
    more = len(rows) > limit
    return CustomerOrdersPage(items=page, next=str(page[-1].sequence) if more else None)

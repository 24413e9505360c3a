"""GET /customers/{id}/orders: one customer's orders in the order they were processed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.authn import BearerRoute, bearer
from app.api.deps import ConnectionDep, PrincipalDep
from app.api.problems import problem_responses
from app.api.schemas import CustomerOrdersPage, OrderSummary
from app.auth import READ, OtherCustomerError
from app.contract import CustomerId
from app.db import queries

router = APIRouter(tags=["customers"], route_class=BearerRoute)


@router.get(
    "/customers/{customer_id}/orders",
    response_model=CustomerOrdersPage,
    responses=problem_responses(400, 401, 403, 422, 429, 503),
    openapi_extra=bearer(READ),
)
async def list_customer_orders(
    customer_id: CustomerId,
    connection: ConnectionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    # [0-9], not \d: Rust's regex (pydantic's) takes any Unicode digit ("٣") for \d.
    after: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,18}$", description="a `next` cursor")
    ] = None,
) -> CustomerOrdersPage:
    """Needs `orders:read`; a customer's token may list its own customer's orders only (403)."""
    if not principal.acts_for(customer_id):
        raise OtherCustomerError
    rows = await queries.customer_orders(connection, customer_id, int(after or 0), limit + 1)
    page = [OrderSummary(**row) for row in rows[:limit]]
    more = len(rows) > limit
    return CustomerOrdersPage(items=page, next=str(page[-1].sequence) if more else None)

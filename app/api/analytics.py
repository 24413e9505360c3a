"""GET /analytics/revenue: revenue per currency in closed one-minute windows (`orders analytics`).

Read like the other reads: a bearer token with `orders:read`. Revenue is an aggregate over every
customer's orders, so a customer's token (one that acts for a single customer) is refused with
403, before its parameters are looked at: a service's or an operator's token reads it.

Only closed windows are served (app/analytics/windows.py: the group's watermark has passed their
end plus ANALYTICS_GRACE_S), from the group ANALYTICS_GROUP_ID on KAFKA_ORDERS_TOPIC; a window
that still receives orders is not an answer yet. Amounts are decimal strings, as in the orders.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, Field

from app.analytics import window_store
from app.api.authn import BearerRoute, bearer
from app.api.deps import ConnectionDep, PrincipalDep, Resources
from app.api.problems import problem_responses
from app.auth import READ, AccessRefusedError
from app.contract import ISO_4217_CODES, Instant

router = APIRouter(tags=["analytics"], route_class=BearerRoute)

MAX_SPAN = timedelta(days=31)
DEFAULT_LIMIT = 1440  # a day of one-minute windows
MAX_LIMIT = 10_080  # a week of them


class AggregateRefusedError(AccessRefusedError):
    """A customer's token asked for an aggregate over every customer (403)."""

    def __init__(self) -> None:
        super().__init__(
            "revenue is an aggregate over every customer's orders: a customer's token may not "
            "read it; use a service's token"
        )


async def not_a_customer(principal: PrincipalDep) -> None:
    """A dependency, so that it runs before the query's parameters are validated."""
    if principal.customer is not None:
        raise AggregateRefusedError


class RevenueWindow(BaseModel):
    window_start: datetime
    window_end: datetime
    currency: str
    orders: int
    revenue: Decimal = Field(description="the sum of the orders' totals, a decimal string")
    late_orders: int = Field(
        description="orders added after the window had closed, as corrections (included in "
        "`orders` and `revenue`)"
    )


class RevenuePage(BaseModel):
    windows: list[RevenueWindow]
    closed_through: datetime | None = Field(
        description="every window that ends by this instant is closed (the watermark minus the "
        "grace); null while the group has not read every partition yet"
    )
    next: datetime | None = Field(
        description="pass as `from` for the next page (same `to`); null at the end"
    )


def _known_currency(code: str | None) -> str | None:
    if code is not None and code not in ISO_4217_CODES:
        msg = f"{code!r} is not an ISO 4217 currency code"
        raise ValueError(msg)
    return code


Currency = Annotated[
    str | None,
    Query(
        min_length=3,
        max_length=3,
        description="an ISO 4217 code; default: every currency",
        examples=["EUR"],
        json_schema_extra={"enum": sorted(ISO_4217_CODES)},
    ),
    AfterValidator(_known_currency),
]


RESPONSES = problem_responses(400, 401, 403, 422, 429, 503)
RESPONSES[403] = {
    **RESPONSES[403],
    "description": "The token lacks `orders:read` (WWW-Authenticate: "
    'error="insufficient_scope"), or acts for one customer: revenue is an aggregate over '
    "every customer's orders",
}


@router.get(
    "/analytics/revenue",
    response_model=RevenuePage,
    responses=RESPONSES,
    openapi_extra=bearer(READ),
    dependencies=[Depends(not_a_customer)],
)
async def revenue(
    request: Request,
    connection: ConnectionDep,
    start: Annotated[
        Instant,
        Query(alias="from", description="ISO 8601 with an offset; windows starting at or after"),
    ],
    end: Annotated[
        Instant,
        Query(
            alias="to",
            description=f"ISO 8601 with an offset; windows starting before; at most "
            f"{MAX_SPAN.days} days after `from`",
        ),
    ],
    currency: Currency = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description="window starts per page (all currencies)")
    ] = DEFAULT_LIMIT,
) -> RevenuePage:
    """Order count and revenue per currency of each closed window starting in [from, to).

    Needs `orders:read` and a token that acts for no single customer (403 otherwise).
    """
    if end <= start:
        _refuse("to", end, "must be after `from`")
    if end - start > MAX_SPAN:
        _refuse("to", end, f"must be at most {MAX_SPAN.days} days after `from`")
    resources: Resources = request.app.state.resources
    settings = resources.settings
    found = await window_store.closed_windows(
        connection,
        group_id=settings.analytics.group_id,
        topic=settings.kafka.orders_topic,
        grace_s=settings.analytics.grace_s,
        start=start,
        end=end,
        currency=currency,
        limit=limit,
    )
    return RevenuePage(
        windows=[RevenueWindow(**vars(window)) for window in found.windows],
        closed_through=found.closed_through,
        next=found.next_start,
    )


def _refuse(name: str, value: datetime, msg: str) -> None:
    raise RequestValidationError(
        [{"loc": ("query", name), "msg": msg, "type": "value_error", "input": value.isoformat()}]
    )

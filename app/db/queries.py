"""Read queries for the API. The worker's write path lives in app.worker.order_store."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import orders


async def find_order(connection: AsyncConnection, order_id: uuid.UUID) -> dict[str, Any] | None:
    result = await connection.execute(select(orders).where(orders.c.order_id == order_id))
    row = result.mappings().first()
    return dict(row) if row is not None else None


async def customer_orders(
    connection: AsyncConnection, customer_id: str, after_sequence: int, limit: int
) -> list[dict[str, Any]]:
    """A page of one customer's orders in processing order (keyset pagination on sequence)."""
    query = (
        select(
            orders.c.order_id,
            orders.c.sequence,
            orders.c.total,
            orders.c.currency,
            orders.c.accepted_at,
        )
        .where(orders.c.customer_id == customer_id, orders.c.sequence > after_sequence)
        .order_by(orders.c.sequence)
        .limit(limit)
    )
    result = await connection.execute(query)
    return [dict(row) for row in result.mappings()]

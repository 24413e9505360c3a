"""Drive the real ASGI app (lifespan and all) in-process over httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import httpx

from app.api import create_app
from app.publisher import OrderPublisher
from app.settings import Settings


@asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
            yield client


def publisher_behind(client: httpx.AsyncClient) -> OrderPublisher:
    """The running app's publisher, for tests that break its producer on purpose."""
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    publisher: OrderPublisher = transport.app.state.resources.publisher  # type: ignore[attr-defined]
    return publisher


def order_body(customer_id: str, n: int = 1, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "customer_id": customer_id,
        "items": [{"sku": f"sku-{n}", "quantity": 1 + n % 3, "unit_price": str(Decimal(n) / 4)}],
        "currency": "EUR",
    }
    body.update(overrides)
    return body

"""Drive the real ASGI app (lifespan and all) in-process over httpx, as an authenticated client:
by default the scenario's service (no customer, both scopes), with a token signed by the tests'
local key (tests/integration/conftest.py's make_settings names it).

Each scenario (its settings, so its topic) is a service of its own: Idempotency-Keys are scoped
to the client, and the tests of a session share one database, so "k-1" of one test must not be
"k-1" of another."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import httpx

from app.api import create_app
from app.api.intake import IntakeGate
from app.auth import SCOPES, Principal, local_token
from app.publisher import OrderPublisher
from app.settings import Settings


def service(settings: Settings) -> str:
    """The scenario's service: the default token's subject and client id."""
    return f"tests-{settings.kafka.orders_topic}"


def token_for(
    settings: Settings,
    subject: str | None = None,
    scopes: tuple[str, ...] = SCOPES,
    customer: str | None = None,
    **options: Any,
) -> str:
    """A token the API under `settings` accepts, by default the scenario's service's
    (client_id, ttl_s: see app.auth.local_token)."""
    subject = subject or service(settings)
    return local_token(settings.auth, subject, scopes, customer=customer, **options)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def service_principal(settings: Settings) -> Principal:
    """Who the default client is, as the API sees it."""
    return Principal(service(settings), service(settings), settings.auth.issuer, frozenset(SCOPES))


@asynccontextmanager
async def api_client(
    settings: Settings, *, authenticated: bool = True, token: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app; its requests carry `token`, or the service's, unless
    `authenticated` is false (then none)."""
    headers = bearer(token or token_for(settings)) if authenticated else {}
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://orders", headers=headers
        ) as client:
            yield client


def publisher_behind(client: httpx.AsyncClient) -> OrderPublisher:
    """The running app's publisher, for tests that break its producer on purpose."""
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    publisher: OrderPublisher = transport.app.state.resources.publisher  # type: ignore[attr-defined]
    return publisher


def intake_behind(client: httpx.AsyncClient) -> IntakeGate:
    """The running app's intake gate (app/api/intake.py)."""
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    gate: IntakeGate = transport.app.state.intake  # type: ignore[attr-defined]
    return gate


def order_body(customer_id: str, n: int = 1, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "customer_id": customer_id,
        "items": [{"sku": f"sku-{n}", "quantity": 1 + n % 3, "unit_price": str(Decimal(n) / 4)}],
        "currency": "EUR",
    }
    body.update(overrides)
    return body

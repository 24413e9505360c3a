"""Typed dependencies: the resources the lifespan owns, handed to routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.api.authn import Authenticator, get_principal
from app.api.idempotency import IdempotencyKeys
from app.auth import Principal
from app.errors import DatabaseUnavailableError
from app.publisher import OrderPublisher
from app.settings import Settings


@dataclass(frozen=True)
class Resources:
    settings: Settings
    engine: AsyncEngine
    publisher: OrderPublisher
    idempotency_keys: IdempotencyKeys
    authenticator: Authenticator


# Dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in a worker
# thread, a thread hop per request that costs more than the dependency itself.
async def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


async def get_connection(
    resources: Annotated[Resources, Depends(get_resources)],
) -> AsyncIterator[AsyncConnection]:
    try:
        async with resources.engine.connect() as connection:
            yield connection
    # PoolTimeoutError: every pooled connection is busy for longer than the pool's timeout.
    # It is SQLAlchemy's own class, neither a DBAPIError nor the builtin TimeoutError.
    except (OperationalError, DBAPIError, OSError, TimeoutError, PoolTimeoutError) as exc:
        msg = f"PostgreSQL did not answer: {type(exc).__name__}"
        raise DatabaseUnavailableError(msg) from exc


def publisher_of(request: Request) -> OrderPublisher:
    """The producer, without a dependency: POST /orders is the hot path (see app/api/orders.py)."""
    resources: Resources = request.app.state.resources
    return resources.publisher


def idempotency_keys_of(request: Request) -> IdempotencyKeys:
    resources: Resources = request.app.state.resources
    return resources.idempotency_keys


ConnectionDep = Annotated[AsyncConnection, Depends(get_connection)]
# Who asks: the principal the route's BearerRoute found (app/api/authn.py).
PrincipalDep = Annotated[Principal, Depends(get_principal)]

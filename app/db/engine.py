"""The async engine, built by a factory at start-up (never at import)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.settings import DatabaseSettings


def create_engine(
    settings: DatabaseSettings, statement_timeout_s: float | None = None
) -> AsyncEngine:
    """`statement_timeout_s` bounds every statement in the driver (the API's reads: a server
    that stops answering must not hold a request); the worker bounds its batches itself."""
    return create_async_engine(
        str(settings.url),
        pool_size=settings.pool_size,
        pool_pre_ping=True,
        pool_timeout=settings.connect_timeout_s,
        connect_args={
            "timeout": settings.connect_timeout_s,
            "command_timeout": statement_timeout_s,
            "server_settings": {
                "idle_in_transaction_session_timeout": str(
                    int(settings.idle_in_transaction_timeout_s * 1000)
                ),
            },
        },
    )

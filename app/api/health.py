"""Liveness (/healthz) and readiness (/readyz: producer up, broker and database answering)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from sqlalchemy import text

from app.api.deps import ResourcesDep
from app.api.schemas import Health

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_S = 2.0


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "Kafka or PostgreSQL is not usable"}},
)
async def readyz(resources: ResourcesDep, response: Response) -> Health:
    producer_ok, database_ok = await asyncio.gather(
        resources.publisher.broker_reachable(CHECK_TIMEOUT_S), _database_answers(resources)
    )
    checks = {"kafka": producer_ok, "database": database_ok}
    if not all(checks.values()):
        response.status_code = 503
        return Health(status="unavailable", checks=checks)
    return Health(status="ok", checks=checks)


async def _database_answers(resources: ResourcesDep) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S), resources.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:  # any failure means "not ready"; the reason is in the database log
        return False
    return True

"""Liveness (/healthz) and readiness (/readyz: producer up, broker and database answering).

Both are open (orchestrators probe them without a token) and so tell nothing but a status: which
dependency is down goes to the log, not to whoever asks.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Response
from sqlalchemy import text

from app.api.deps import ResourcesDep
from app.api.schemas import Health

log = logging.getLogger(__name__)

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
    if not (producer_ok and database_ok):
        log.warning("not ready: kafka %s, database %s", _state(producer_ok), _state(database_ok))
        response.status_code = 503
        return Health(status="unavailable")
    return Health(status="ok")


def _state(ok: bool) -> str:
    return "answers" if ok else "DOES NOT ANSWER"


async def _database_answers(resources: ResourcesDep) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S), resources.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:  # any failure means "not ready"; the reason is in the database log
        return False
    return True

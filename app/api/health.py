"""Liveness (/healthz) and readiness (/readyz: producer up, broker and database answering).

Both are open (orchestrators probe them without a token, and the in-flight cap lets them
through) and so tell nothing but a status: which dependency is down goes to the log, not to
whoever asks.

Being open, /readyz must not let anyone who can reach it load the dependencies: one check takes a
database connection and a Kafka metadata round trip (~60 ms). So the probes share one check:
concurrent probes wait for the one under way (single flight), and its result answers every probe
for READY_CACHE_S after it. However many probe, the dependencies see at most one check a second
per API process, and one pooled connection.

Several API processes (`orders api --workers N`) answer for the set: each checks in the
background and reports, and /readyz is ready only if every live process is
(app/api/readiness_board.py sets `state.readiness` to a SetReadiness in the lifespan).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from fastapi import APIRouter, Request, Response
from sqlalchemy import text

from app.api.deps import Resources
from app.api.schemas import Health

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_S = 2.0
# How long one readiness check answers the probes that follow it. An orchestrator probes every
# few seconds, so one second never hides a change from it, and bounds the checks to one a second.
READY_CACHE_S = 1.0


class Readiness:
    """The last readiness check, shared by the probes: single flight, then cached."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._ready = False
        self._checked_at = -float("inf")
        self._running: asyncio.Task[bool] | None = None

    async def ready(self, resources: Resources) -> bool:
        if self.clock() - self._checked_at < READY_CACHE_S:
            return self._ready
        if self._running is None:
            self._running = asyncio.ensure_future(self._check(resources))
        # shield: a probe that gives up (its client went away) must not cancel the others' check.
        return await asyncio.shield(self._running)

    async def _check(self, resources: Resources) -> bool:
        try:
            ready = await dependencies_ready(resources)
        except Exception:  # a check that fails is a "not ready", never a 500
            log.exception("readiness check failed")
            ready = False
        finally:
            self._running = None
        self._ready, self._checked_at = ready, self.clock()
        return ready


class Probe(Protocol):
    async def ready(self, resources: Resources) -> bool: ...


def readiness_of(request: Request) -> Probe:
    """The app's Readiness, made on the first probe (no await: no two are made), or the
    set's, made by the lifespan."""
    state = request.app.state
    readiness: Probe | None = getattr(state, "readiness", None)
    if readiness is None:
        readiness = state.readiness = Readiness()
    return readiness


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "Kafka or PostgreSQL is not usable"}},
)
async def readyz(request: Request, response: Response) -> Health:
    resources: Resources = request.app.state.resources
    if not await readiness_of(request).ready(resources):
        response.status_code = 503
        return Health(status="unavailable")
    return Health(status="ok")


async def dependencies_ready(resources: Resources) -> bool:
    """One readiness check: the producer reaches a broker and the database answers."""
    producer_ok, database_ok = await asyncio.gather(
        resources.publisher.broker_reachable(CHECK_TIMEOUT_S), _database_answers(resources)
    )
    if not (producer_ok and database_ok):
        log.warning("not ready: kafka %s, database %s", _state(producer_ok), _state(database_ok))
    return producer_ok and database_ok


def _state(ok: bool) -> str:
    return "answers" if ok else "DOES NOT ANSWER"


async def _database_answers(resources: Resources) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S), resources.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:  # any failure means "not ready"; the reason is in the database log
        return False
    return True

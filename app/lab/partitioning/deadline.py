"""Every wait of the partitioning lab is bounded: a step that does not finish in time fails the
lab with a message naming the step, instead of hanging it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.errors import OrdersError
from app.settings import KafkaSettings


class LabTimeoutError(OrdersError):
    """A lab step did not finish within its deadline (the broker did not answer, or the group
    never settled); the message says which."""


@asynccontextmanager
async def deadline(settings: KafkaSettings, what: str, seconds: float) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        msg = f"{what}: not done within {seconds:g}s (Kafka at {settings.bootstrap_servers})"
        raise LabTimeoutError(msg) from None

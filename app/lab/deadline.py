"""Every wait of the lab is bounded: a step that does not finish in time (a broker that does not
answer, a group that never settles) fails the lab with a message naming the step, instead of
hanging it. One helper for every experiment."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

from app.errors import OrdersError
from app.operations.kafka_clients import KafkaCommandError
from app.settings import KafkaSettings

POLL_S = 0.02


class LabTimeoutError(OrdersError):
    """A lab step did not finish within its deadline; the message says which step."""


class Watched(Protocol):
    """A lab client running in the background (a group member): waits stop if it failed."""

    @property
    def name(self) -> str: ...

    def failed(self) -> BaseException | None: ...


@asynccontextmanager
async def within(
    kafka: KafkaSettings, what: str | Callable[[], str], seconds: float
) -> AsyncIterator[None]:
    """Run the block for at most `seconds`; past that, LabTimeoutError naming `what` (a
    callable: the step in hand when time ran out). A shorter wait inside the block that times
    out on its own is reported as such."""
    timeout = asyncio.timeout(seconds)
    try:
        async with timeout:
            yield
    except TimeoutError:
        step = what() if callable(what) else what
        why = f"not done within {seconds:g}s" if timeout.expired() else "a wait in it timed out"
        msg = f"{step}: {why} (is Kafka at {kafka.bootstrap_servers} answering?)"
        raise LabTimeoutError(msg) from None


async def until(
    kafka: KafkaSettings,
    what: str,
    seconds: float,
    condition: Callable[[], bool],
    watched: Sequence[Watched] = (),
) -> float:
    """Wait until `condition()` holds (checked every 20 ms); the monotonic time it did. A
    `watched` client that fails meanwhile ends the wait with its error, not with a timeout."""
    async with within(kafka, f"waiting for {what}", seconds):
        # Polled: the conditions read state that aiokafka's callbacks and tasks change, which
        # signal no event of their own.
        while not condition():
            for client in watched:
                if (error := client.failed()) is not None:
                    msg = f"waiting for {what}: {client.name} failed: {error!r}"
                    raise KafkaCommandError(msg) from error
            await asyncio.sleep(POLL_S)
    return time.monotonic()

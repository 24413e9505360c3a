"""Every wait of the groups and offsets labs is bounded: a group that never settles, or a broker
that does not answer, fails the lab with a message naming the step instead of hanging it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

from app.operations.kafka_clients import KafkaCommandError
from app.settings import KafkaSettings

POLL_S = 0.02


class Watched(Protocol):
    """A lab client running in the background (a group member): waits stop if it failed."""

    @property
    def name(self) -> str: ...

    def failed(self) -> BaseException | None: ...


@asynccontextmanager
async def within(kafka: KafkaSettings, what: str, seconds: float) -> AsyncIterator[None]:
    """Run the block for at most `seconds`; past that, KafkaCommandError naming `what`."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        where = kafka.bootstrap_servers
        msg = f"{what}: not done within {seconds:g}s (is Kafka at {where} answering?)"
        raise KafkaCommandError(msg) from None


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

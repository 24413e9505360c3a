"""What every consumer-group member process (`orders worker`, `analytics`, `payments`) does
around its loop: drain on the first signal, exit at once on the second, and keep trying to join
while the broker is still starting instead of crash-looping."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

EXIT_ON_SECOND_SIGNAL = 130


def drain_on_signals(request_stop: Callable[[], None], draining: str) -> None:
    """SIGTERM/SIGINT: `request_stop()` (the member finishes `draining`, then leaves its
    group); a second one exits at once: whatever was not committed is redone by the next owner,
    which is what every member's guarantees already absorb."""
    loop = asyncio.get_running_loop()
    seen = 0

    def on_signal(signum: int) -> None:
        nonlocal seen
        seen += 1
        name = signal.Signals(signum).name
        if seen > 1:
            log.warning("second %s: exiting now", name)
            os._exit(EXIT_ON_SECOND_SIGNAL)
        log.info("%s: %s, then leaving", name, draining)
        request_stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


async def start_with_retries(
    start: Callable[[], Awaitable[None]],
    *,
    stopping: Callable[[], bool],
    backoff_initial_s: float,
    backoff_max_s: float,
    after_failure: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """`start()` until it succeeds or a stop is requested, backing off (doubling, capped)
    between tries; `after_failure()` cleans up a half-started member before the next try."""
    backoff = backoff_initial_s
    while not stopping():
        try:
            await start()
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("could not join the group yet (%r); retrying in %.1fs", exc, backoff)
            if after_failure is not None:
                await after_failure()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, backoff_max_s)
        else:
            return

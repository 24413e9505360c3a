"""Joining while the broker starts: retried with a doubling, capped back-off; a stop ends it."""

from __future__ import annotations

import asyncio
import itertools

from aiokafka.errors import KafkaConnectionError

from app.member_lifecycle import start_with_retries


async def test_a_start_that_fails_is_retried_after_cleaning_up_until_it_succeeds() -> None:
    attempts: list[float] = []
    cleanups = 0
    loop = asyncio.get_running_loop()

    async def start() -> None:
        attempts.append(loop.time())
        if len(attempts) < 4:
            raise KafkaConnectionError("broker not there yet")

    async def cleanup() -> None:
        nonlocal cleanups
        cleanups += 1

    await start_with_retries(
        start,
        stopping=lambda: False,
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
        after_failure=cleanup,
    )
    assert len(attempts) == 4
    assert cleanups == 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.01
    assert all(gap >= 0.02 for gap in gaps[1:])  # doubled, then capped


async def test_a_stop_requested_while_retrying_ends_the_tries() -> None:
    attempts = 0

    async def start() -> None:
        nonlocal attempts
        attempts += 1
        raise TimeoutError

    await start_with_retries(
        start, stopping=lambda: attempts >= 2, backoff_initial_s=0.001, backoff_max_s=0.001
    )
    assert attempts == 2

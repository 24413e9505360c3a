"""Closing a Kafka client or an engine: bounded, and no failure of it hides why we stop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def close_quietly(closing: Awaitable[object], within_s: float = 5.0) -> None:
    try:
        await asyncio.wait_for(closing, within_s)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # we are being cancelled ourselves
        # aiokafka 0.14's consumer.stop() may raise the CancelledError of its own fetch task
        # (cancelled while it slept after a failed fetch): not ours to pass on.
    except Exception:  # a broker away, a connection already broken: we are closing anyway
        return

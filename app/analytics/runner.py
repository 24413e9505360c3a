"""`orders analytics`: run one member of the analytics group until SIGTERM/SIGINT, then drain.

First signal: stop fetching, store the batch in hand, leave the group, exit 0, all within
WORKER_SHUTDOWN_TIMEOUT_S. Second signal: exit at once (the exact mode's next owner redoes the
unstored batch; the fast mode may count it twice or never: that is the fast mode).

No status server of its own: the analytics settings have no port for one (the worker's
/metrics and /readyz are app/worker/status_server.py); late orders are counted in its log and in
each window's `late_orders`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from aiokafka.errors import KafkaError

from app.analytics import exact, fast
from app.analytics.member import AnalyticsMember, Mode
from app.closing import close_quietly
from app.db.engine import create_engine
from app.settings import Settings

log = logging.getLogger(__name__)

EXIT_ON_SECOND_SIGNAL = 130
MODES: dict[str, Mode] = {fast.NAME: fast, exact.NAME: exact}


async def run_analytics(settings: Settings, group_instance_id: str | None = None) -> int:
    engine = create_engine(settings.database)
    member = AnalyticsMember(
        settings, engine, MODES[settings.analytics.mode], instance_id=group_instance_id
    )
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(EXIT_ON_SECOND_SIGNAL)
        log.info("%s: storing the batch in hand, then leaving", signal.Signals(signum).name)
        member.request_stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await _start_with_retries(member, settings)
        await member.run()
    finally:
        try:
            await asyncio.wait_for(
                close_quietly(member.close(), settings.worker.shutdown_timeout_s),
                settings.worker.shutdown_timeout_s,
            )
        except TimeoutError:
            log.warning("leaving the group took too long; exiting anyway")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(engine.dispose(), settings.database.connect_timeout_s)
    log.info("analytics member %s stopped: %s", member.name, member.stats)
    return 0


async def _start_with_retries(member: AnalyticsMember, settings: Settings) -> None:
    """The broker may still be starting (or restarting): keep trying instead of crash-looping."""
    backoff = settings.worker.retry_backoff_initial_s
    while not member.stopping:
        try:
            await member.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("could not join the group yet (%r); retrying in %.1fs", exc, backoff)
            await close_quietly(member.consumer.stop())
            member.reset_clients()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, settings.worker.retry_backoff_max_s)
        else:
            return

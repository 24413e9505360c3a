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

from app.analytics import exact, fast
from app.analytics.member import AnalyticsMember, Mode
from app.closing import close_quietly
from app.db.engine import create_engine
from app.member_lifecycle import drain_on_signals, start_with_retries
from app.settings import Settings

log = logging.getLogger(__name__)

MODES: dict[str, Mode] = {fast.NAME: fast, exact.NAME: exact}


async def run_analytics(settings: Settings, group_instance_id: str | None = None) -> int:
    engine = create_engine(settings.database)
    member = AnalyticsMember(
        settings, engine, MODES[settings.analytics.mode], instance_id=group_instance_id
    )
    drain_on_signals(member.request_stop, "storing the batch in hand")
    try:
        await start_with_retries(
            member.start,
            stopping=lambda: member.stopping,
            backoff_initial_s=settings.worker.retry_backoff_initial_s,
            backoff_max_s=settings.worker.retry_backoff_max_s,
            after_failure=lambda: _reset(member),
        )
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


async def _reset(member: AnalyticsMember) -> None:
    await close_quietly(member.consumer.stop())
    member.reset_clients()

"""`orders payments`: run one member until SIGTERM/SIGINT, then drain and leave.

First signal: stop fetching, let the charges in flight finish (WORKER_SHUTDOWN_TIMEOUT_S), commit
their events and offsets, leave the group, exit 0. Second signal: exit at once; the next owner
redoes whatever was not committed, charge-free (the charge key) and with no event shown twice
(the transactions). No status server: the member's state is in its log and in the group's
offsets (`orders lag`, kafka-consumer-groups).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from app.db.engine import create_engine
from app.member_lifecycle import drain_on_signals, start_with_retries
from app.payments.worker import PaymentsWorker
from app.settings import Settings

log = logging.getLogger(__name__)


async def run_payments(settings: Settings) -> int:
    engine = create_engine(settings.database)
    worker = PaymentsWorker(settings, engine)
    drain_on_signals(worker.request_stop, "finishing the charges in flight")
    shutdown_s = settings.worker.shutdown_timeout_s
    try:
        await start_with_retries(
            worker.start,
            stopping=lambda: worker.stopping,
            backoff_initial_s=settings.payments.retry_backoff_initial_s,
            backoff_max_s=settings.payments.retry_backoff_max_s,
        )
        if not worker.stopping:
            log.info("payments member %s started", worker.name)
            await worker.run()
            await asyncio.wait_for(worker.drain(shutdown_s), shutdown_s)
    except TimeoutError:
        log.warning("draining took over %.0fs; the next owner redoes the rest", shutdown_s)
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.close(), shutdown_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(engine.dispose(), settings.database.connect_timeout_s)
    log.info("payments %s stopped: %s", worker.name, worker.stats)
    return 0

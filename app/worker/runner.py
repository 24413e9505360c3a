"""`orders worker`: run one group member until SIGTERM/SIGINT, then drain and leave.

First signal: stop fetching, finish and commit the in-flight batch, leave the group, exit 0,
all within WORKER_SHUTDOWN_TIMEOUT_S. Second signal: exit at once (the next owner redoes the
uncommitted batch; the ledger absorbs it, so nothing is lost or doubled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from aiokafka.errors import KafkaError

from app.db.engine import create_engine
from app.gc_tuning import tune_gc_for_throughput
from app.settings import Settings
from app.worker.consumer import OrderWorker, stop_quietly

log = logging.getLogger(__name__)

EXIT_ON_SECOND_SIGNAL = 130


async def run_worker(settings: Settings) -> int:
    engine = create_engine(settings.database)
    worker = OrderWorker(settings, engine)
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(EXIT_ON_SECOND_SIGNAL)
        log.info("%s: finishing the batch in flight, then leaving", signal.Signals(signum).name)
        worker.request_stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await _start_with_retries(worker, settings)
        tune_gc_for_throughput()
        await worker.run()
    finally:
        # Leaving is bounded too; if it overruns, the next owner redoes at most one batch.
        try:
            await asyncio.wait_for(stop_quietly(worker), settings.worker.shutdown_timeout_s)
        except TimeoutError:
            log.warning(
                "leaving the group took over %.0fs; exiting anyway",
                settings.worker.shutdown_timeout_s,
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(engine.dispose(), settings.database.connect_timeout_s)
    log.info("worker %s stopped: %s", worker.name, worker.stats)
    return 0


async def _start_with_retries(worker: OrderWorker, settings: Settings) -> None:
    """The broker may still be starting (or restarting): keep trying instead of crash-looping."""
    backoff = settings.worker.retry_backoff_initial_s
    while not worker.stopping:
        try:
            await worker.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("could not join the group yet (%r); retrying in %.1fs", exc, backoff)
            await stop_quietly(worker)
            worker.reset_clients()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, settings.worker.retry_backoff_max_s)
        else:
            return

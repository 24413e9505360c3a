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
import os
import signal

from aiokafka.errors import KafkaError

from app.db.engine import create_engine
from app.payments.worker import PaymentsWorker
from app.settings import Settings

log = logging.getLogger(__name__)

EXIT_ON_SECOND_SIGNAL = 130


async def run_payments(settings: Settings) -> int:
    engine = create_engine(settings.database)
    worker = PaymentsWorker(settings, engine)
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(EXIT_ON_SECOND_SIGNAL)
        log.info("%s: finishing the charges in flight, then leaving", signal.Signals(signum).name)
        worker.request_stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    shutdown_s = settings.worker.shutdown_timeout_s
    try:
        await _start_with_retries(worker, settings)
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


async def _start_with_retries(worker: PaymentsWorker, settings: Settings) -> None:
    """The broker may still be starting: keep trying instead of crash-looping."""
    backoff = settings.payments.retry_backoff_initial_s
    while not worker.stopping:
        try:
            await worker.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("could not join the group yet (%r); retrying in %.1fs", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, settings.payments.retry_backoff_max_s)
        else:
            return

"""`orders worker`: run one group member until SIGTERM/SIGINT, then drain and leave.

First signal: stop fetching, finish and commit the in-flight batch, leave the group, exit 0,
all within WORKER_SHUTDOWN_TIMEOUT_S. Second signal: exit at once (the next owner redoes the
uncommitted batch; the ledger absorbs it, so nothing is lost or doubled).

Beside the batch loop run the stall detector (app.worker.stall_detector) and the member's HTTP
server for /metrics, /healthz and /readyz (app.worker.status_server), from before the member
joins until after it has left. A port that cannot be listened on fails the start (exit 2).
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
from app.worker.metrics import worker_metrics
from app.worker.stall_detector import StallDetector
from app.worker.status_server import StatusServer, StatusServerError, status_app

log = logging.getLogger(__name__)

EXIT_ON_SECOND_SIGNAL = 130
EXIT_CANNOT_LISTEN = 2
STATUS_SERVER_STOP_S = 2.0


async def run_worker(settings: Settings) -> int:
    metrics = worker_metrics(settings.metrics.enabled, settings.kafka.orders_topic)
    engine = create_engine(settings.database)
    worker = OrderWorker(settings, engine, metrics=metrics)
    detector = StallDetector(worker, settings, metrics)
    server: StatusServer | None = None
    if settings.worker.metrics_port:
        app = status_app(detector.ready, metrics=settings.metrics.enabled)
        server = StatusServer(settings.worker.metrics_host, settings.worker.metrics_port, app)
        try:
            await server.start()
        except StatusServerError as exc:
            log.error("%s", exc)  # noqa: TRY400 - the cause is in the line
            await engine.dispose()
            return EXIT_CANNOT_LISTEN
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
    sampling: asyncio.Task[None] | None = None
    try:
        await _start_with_retries(worker, settings)
        tune_gc_for_throughput()
        sampling = asyncio.create_task(detector.run())
        await worker.run()
    finally:
        detector.stop()
        if sampling is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sampling, settings.worker.commit_timeout_s)
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
        if server is not None:  # last: scrapes and probes answer while the member drains
            await server.stop(STATUS_SERVER_STOP_S)
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

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

from app.db.engine import create_engine
from app.gc_tuning import tune_gc_for_throughput
from app.member_lifecycle import drain_on_signals, start_with_retries
from app.settings import Settings
from app.worker.consumer import OrderWorker, stop_quietly
from app.worker.metrics import worker_metrics
from app.worker.stall_detector import StallDetector
from app.worker.status_server import StatusServer, StatusServerError, status_app

log = logging.getLogger(__name__)

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
    drain_on_signals(worker.request_stop, "finishing the batch in flight")
    sampling: asyncio.Task[None] | None = None
    try:
        await start_with_retries(
            worker.start,
            stopping=lambda: worker.stopping,
            backoff_initial_s=settings.worker.retry_backoff_initial_s,
            backoff_max_s=settings.worker.retry_backoff_max_s,
            after_failure=lambda: _reset(worker),
        )
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


async def _reset(worker: OrderWorker) -> None:
    await stop_quietly(worker)
    worker.reset_clients()

"""The ASGI application: its lifespan owns the engine and the producer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider

from app import tracing
from app.api import analytics, customers, health, metrics, orders, readiness_board
from app.api.authn import Authenticator, document_bearer_scheme
from app.api.deps import Resources
from app.api.edge_guard import InFlightCap
from app.api.guard import RequestGuard
from app.api.idempotency import IdempotencyKeys
from app.api.intake import IntakeGate
from app.api.problems import install_problem_handlers
from app.api.process_set import shared_dir
from app.api.rate_limit import RateLimiter
from app.api.request_metrics import RequestMetrics
from app.db.engine import create_engine
from app.gc_tuning import tune_gc_for_throughput
from app.observability import exposition
from app.publisher import OrderPublisher
from app.settings import Settings, get_settings


def create_app(
    settings: Settings | None = None, tracer_provider: TracerProvider | None = None
) -> FastAPI:
    """The app; `tracer_provider` (tests) or else the OTEL_* variables (app.tracing: off by
    default) decide whether requests and orders are traced."""
    settings = settings or get_settings()
    # METRICS_ENABLED=false: no middleware, nothing handed a metric, no /metrics (404).
    measured = settings.metrics.enabled
    if measured:
        exposition.check_multiprocess_mode()
    count_unavailable = metrics.count_unavailable if measured else None
    # One of several API processes (`orders api --workers N`): what they share, or None.
    shared = shared_dir(settings.api)
    tracer_provider = tracer_provider or tracing.from_environment(tracing.API_SERVICE)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if measured:  # last out: this process's live gauges leave the other processes' sums
                stack.callback(exposition.mark_process_dead)
            # First: a key that cannot be read stops the start before anything connects.
            authenticator = Authenticator.from_settings(settings.auth)
            await authenticator.start()
            engine = create_engine(settings.database, settings.database.connect_timeout_s)
            stack.push_async_callback(engine.dispose)
            publisher = OrderPublisher(
                settings.kafka,
                settings.api.ack_deadline_s,
                settings.api.ack_grace_s,
                tracing.tracer_of(tracer_provider),
                metrics=metrics.ProducerMetrics(settings.kafka.orders_topic) if measured else None,
            )
            await publisher.start()
            stack.push_async_callback(publisher.stop)
            # Whether POST /orders is open (`orders topics grow` pauses it): read before serving.
            intake = IntakeGate.from_settings(
                settings, engine, publisher, metrics.intake_open if measured else None
            )
            await intake.start()
            stack.push_async_callback(intake.stop)
            app.state.intake = intake
            keys = IdempotencyKeys.from_settings(settings)
            await keys.start()
            stack.push_async_callback(keys.stop)
            app.state.resources = Resources(settings, engine, publisher, keys, authenticator)
            if shared is not None:  # /readyz answers for the set (stops before the resources)
                await stack.enter_async_context(
                    readiness_board.reporting(app.state, app.state.resources, shared)
                )
            tune_gc_for_throughput()
            yield

    app = FastAPI(
        title="orders",
        summary="Orders accepted over HTTP, carried by Kafka, stored in PostgreSQL exactly once.",
        version="0.1.0",
        lifespan=lifespan,
        # API_DOCS_ENABLED=false: no /docs, /redoc or /openapi.json (404).
        openapi_url="/openapi.json" if settings.api.docs_enabled else None,
        docs_url="/docs" if settings.api.docs_enabled else None,
        redoc_url="/redoc" if settings.api.docs_enabled else None,
    )
    document_bearer_scheme(app)
    if tracer_provider is not None:
        tracing.instrument_app(app, tracer_provider)
    app.add_middleware(RequestGuard, max_body_bytes=settings.api.max_body_bytes)
    # Outside the guard: a request over the cap is refused before any other work.
    app.add_middleware(
        InFlightCap,
        max_in_flight=settings.api.max_in_flight,
        retry_after_s=settings.api.retry_after_s,
        count_unavailable=count_unavailable,
    )
    if measured:  # outermost of all: the refusals of the middlewares inside are counted too
        app.add_middleware(RequestMetrics)
    app.state.rate_limiter = RateLimiter.from_settings(settings.api, shared)
    # Starlette would answer `/orders/` with a redirect to an absolute URL built from the
    # request's Host header; an unknown path is a 404 instead.
    app.router.redirect_slashes = False
    install_problem_handlers(app, settings.api.retry_after_s, count_unavailable)
    app.include_router(orders.router)
    app.include_router(customers.router)
    app.include_router(analytics.router)
    app.include_router(health.router)
    if measured:
        app.include_router(metrics.router)
    return app

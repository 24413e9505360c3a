"""The API process's Prometheus metrics, and GET /metrics.

The names and labels are the operator contract (dashboards and alerts are written against them):
they are spelled here once. Every label value comes from a fixed set (route templates, status
codes, reason slugs, Kafka error class names, partitions), never from a request.

Created at import, in the default registry, and imported only by the API (app/api/app.py): the
worker, which shares app/publisher.py, registers none of them. Whether they count is decided in
create_app: with METRICS_ENABLED=false nothing is handed the objects below, and /metrics is not
routed (404). Several API processes add up through prometheus-client's multiprocess mode
(app/observability/exposition.py says why and how); the gauges say how they add up there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import get_args

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from app.api.edge_limits import EDGE_REFUSALS
from app.errors import BrokerUnavailableReason, IntakeClosedReason
from app.observability import multiprocess_dir, render
from app.observability.lean import (
    LeanCounter,
    LeanCounterChild,
    LeanHistogram,
    LeanHistogramChild,
)

SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
RECORDS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)

# A request the router did not match (an unknown path): never the raw path.
UNMATCHED = "unmatched"

# The 503s the app answers, by reason: the producer's (app.errors.BrokerUnavailableReason), the
# in-flight cap's, the two other dependencies a request may wait on, and the intake gate's
# (app.errors.IntakeClosedReason; partition_count_changed is both the gate's and the producer's).
# /readyz's 503 is a probe's answer, not a refusal, and is not counted here.
OVERLOADED = "overloaded"
DATABASE_UNAVAILABLE = "database_unavailable"
TOKEN_KEYS_UNAVAILABLE = "token_keys_unavailable"
UNAVAILABLE_REASONS = tuple(
    dict.fromkeys(
        (
            *get_args(BrokerUnavailableReason),
            OVERLOADED,
            DATABASE_UNAVAILABLE,
            TOKEN_KEYS_UNAVAILABLE,
            *get_args(IntakeClosedReason),
        )
    )
)

# No `<name>_created` series beside each counter and histogram child (the client's default in
# memory): Prometheus ingests each as a gauge of its own, doubling the series for nothing.
disable_created_metrics()  # type: ignore[no-untyped-call]

# The five updated for every accepted order are lean in memory (app/observability/lean.py: an
# update costs a fraction of prometheus-client's); in multiprocess mode their values must be in
# the process's files, so there they are prometheus-client's own.
IN_FILES = multiprocess_dir() is not None
HotCounter = Counter if IN_FILES else LeanCounter
HotHistogram = Histogram if IN_FILES else LeanHistogram
CounterChild = Counter | LeanCounterChild
HistogramChild = Histogram | LeanHistogramChild

HTTP_REQUESTS = HotCounter(
    "orders_http_requests_total",
    "Responses the app sent, by route template and status",
    ["route", "status"],
)
HTTP_REQUEST_DURATION = HotHistogram(
    "orders_http_request_duration_seconds",
    "From a request reaching the app to the end of its response",
    ["route"],
    buckets=SECONDS_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge(
    "orders_http_requests_in_flight",
    "Requests being answered (all API processes: the sum over the live ones)",
    multiprocess_mode="livesum",
)
HTTP_EDGE_REFUSALS = Counter(
    "orders_http_edge_refusals_total",
    "Requests or connections refused by the HTTP edge before the app saw them",
    ["reason"],
)
HTTP_UNAVAILABLE = Counter(
    "orders_http_unavailable_total",
    "503 answers of the app, by reason (not /readyz)",
    ["reason"],
)
KAFKA_ACK_SECONDS = HotHistogram(
    "orders_kafka_ack_seconds",
    "From handing an order to the producer to the broker's acks=all acknowledgement",
    buckets=SECONDS_BUCKETS,
)
PRODUCER_RECORDS = HotCounter(
    "orders_producer_records_total",
    "Records acknowledged by the broker",
    ["topic", "partition"],
)
PRODUCER_BATCH_RECORDS = HotHistogram(
    "orders_producer_batch_records",
    "Records per partition batch handed to the producer",
    buckets=RECORDS_BUCKETS,
)
PRODUCER_ERRORS = Counter(
    "orders_producer_errors_total",
    "Produce failures by exception class (Kafka's error classes, TimeoutError)",
    ["error"],
)
PRODUCER_REPLACEMENTS = Counter(
    "orders_producer_replacements_total",
    "Producers retired and replaced after a fatal error or a dead sender",
)
PRODUCER_CONNECTED = Gauge(
    "orders_producer_connected",
    "1 while the producer is connected (all API processes: how many have one)",
    multiprocess_mode="livesum",
)
# 0 until the process has read the intake state (app/api/intake.py); "livemin": with several
# processes, 0 as long as one of them refuses orders.
INTAKE_OPEN = Gauge(
    "orders_intake_open",
    "1 while POST /orders is open; 0 while intake is paused, unknown or refused "
    "(all API processes: 0 if any is closed)",
    multiprocess_mode="livemin",
)

# Children of the fixed sets made now, so that each series exists (at 0) before its first event:
# rate() and increase() over a series that appears with its first increment miss that increment.
_UNAVAILABLE = {reason: HTTP_UNAVAILABLE.labels(reason) for reason in UNAVAILABLE_REASONS}
_EDGE = {refusal: HTTP_EDGE_REFUSALS.labels(refusal) for refusal in EDGE_REFUSALS}
PRODUCER_ERRORS.labels("TimeoutError")


def count_unavailable(reason: str) -> None:
    """One 503 answered for `reason` (one of UNAVAILABLE_REASONS)."""
    _UNAVAILABLE[reason].inc()


def intake_open(open_: bool) -> None:
    """The intake gate opened (True) or closed (False)."""
    INTAKE_OPEN.set(1 if open_ else 0)


def count_edge_refusal(reason: str) -> None:
    """One refusal by the HTTP edge (one of app.api.edge_limits.EDGE_REFUSALS)."""
    _EDGE[reason].inc()


class ProducerMetrics:
    """What app/publisher.py and app/batching.py count, for one topic; the label children are
    resolved once per partition (or error class) and kept: the set is bounded by the topic."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.ack_seconds = KAFKA_ACK_SECONDS
        self.batch_records = PRODUCER_BATCH_RECORDS
        self._records: dict[int, CounterChild] = {}
        self._errors: dict[str, Counter] = {}

    def acknowledged(self, partition: int, records: int) -> None:
        child = self._records.get(partition)
        if child is None:
            child = self._records[partition] = PRODUCER_RECORDS.labels(self.topic, str(partition))
        child.inc(records)

    def failed(self, error: BaseException) -> None:
        name = type(error).__name__
        child = self._errors.get(name)
        if child is None:
            child = self._errors[name] = PRODUCER_ERRORS.labels(name)
        child.inc()

    def replaced(self) -> None:
        PRODUCER_REPLACEMENTS.inc()

    def connected(self, up: bool) -> None:
        PRODUCER_CONNECTED.set(1 if up else 0)


# /metrics is open on the API's port (like the probes, and past the in-flight cap, so that an
# overload stays visible), and one render takes ~1 ms of the event loop (more in multiprocess
# mode, which reads every process's files). So a flood of scrapes must not reach render(): one
# render answers every scrape for SCRAPE_CACHE_S after it. Prometheus scrapes every 10 s.
SCRAPE_CACHE_S = 1.0


class RenderedRecently:
    """The last rendering of the metrics, reused for SCRAPE_CACHE_S."""

    def __init__(
        self, render: Callable[[], bytes], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._render = render
        self._clock = clock
        self._body = b""
        self._rendered_at = -float("inf")

    def body(self) -> bytes:
        now = self._clock()
        if now - self._rendered_at >= SCRAPE_CACHE_S:
            self._body, self._rendered_at = self._render(), now
        return self._body


router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "The Prometheus text format (open, like the probes; 404 when "
            "METRICS_ENABLED=false)",
        }
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus text format: this process's metrics, or every API process's added up."""
    return Response(rendered_of(request).body(), media_type=CONTENT_TYPE_LATEST)


def rendered_of(request: Request) -> RenderedRecently:
    """The app's RenderedRecently, made on the first scrape (no await: no two are made)."""
    state = request.app.state
    rendered: RenderedRecently | None = getattr(state, "metrics_rendered", None)
    if rendered is None:
        rendered = state.metrics_rendered = RenderedRecently(render)
    return rendered

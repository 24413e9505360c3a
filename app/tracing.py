"""Traces across the hop: HTTP request -> Kafka record headers -> the worker's batch transaction.

Off unless OTEL_TRACES_EXPORTER names an exporter ("otlp", "console"; "none" or unset: off).
Off means no provider, no instrumentation, and a `None` tracer that the hot paths test once.
The other standard variables keep their meaning: OTEL_SERVICE_NAME (default orders-api /
orders-worker), OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_*, OTEL_BSP_*, OTEL_SPAN_*_LIMIT.

The shape follows OpenTelemetry's messaging conventions:
- API: the request's server span (opentelemetry-instrumentation-fastapi) is the parent of one
  "orders publish" PRODUCER span per order, whose context travels in the record's `traceparent`
  header (W3C Trace Context; not the client's `tracestate`, nor baggage: app.contract documents
  it).
- Worker: one "orders process" CONSUMER span per batch transaction, a new trace with a LINK to
  each record's producer context (a batch has many parents, so links, not a parent).

Why not opentelemetry-instrumentation-aiokafka: it wraps `send()`, `getone()` and `getmany()`
for the whole process (class patching, the global provider). The API never calls `send()`
(records go in batches it fills itself, app/batching.py, via `send_batch()`), so it would
neither make producer spans nor inject headers; on the worker it would make one "receive"
span per fetched record (up to WORKER_MAX_RECORDS per getmany), each ended before the record
is processed, and no span for the transaction that does the work. So the headers are
injected and extracted here with the W3C propagator.

Nothing here sets OpenTelemetry's global tracer provider: the API and the worker each build
their own (or are handed one, as the tests do), so several can live in one process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Final, Protocol

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from app.contract import HEADER_TRACEPARENT, HEADER_TRACESTATE

if TYPE_CHECKING:
    from fastapi import FastAPI

API_SERVICE: Final = "orders-api"
WORKER_SERVICE: Final = "orders-worker"
PUBLISH_SPAN: Final = "orders publish"
PROCESS_SPAN: Final = "orders process"

TRACE_HEADERS: Final = (HEADER_TRACEPARENT, HEADER_TRACESTATE)  # what a record may carry

# The probes and the scrape are called every few seconds by machines: not worth a trace each.
DEFAULT_EXCLUDED_URLS: Final = "/healthz,/readyz,/metrics"

# Only W3C Trace Context crosses the hop, whatever OTEL_PROPAGATORS says for HTTP: baggage
# would copy client-chosen data into every record.
_W3C: Final = TraceContextTextMapPropagator()
_INSTRUMENTATION: Final = "app"
_KAFKA: Final = "kafka"

Header = tuple[str, bytes]


class TracedRecord(Protocol):
    """What a link needs from a consumed record (aiokafka's ConsumerRecord has it)."""

    @property
    def headers(self) -> Sequence[Header]: ...


# --- configuration ------------------------------------------------------------------------


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The span exporters OTEL_TRACES_EXPORTER asks for, as entry point names; [] means off.

    "otlp" is OTLP over HTTP (http/protobuf), the protocol OpenTelemetry's specification makes
    the default; "grpc" in OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL needs
    opentelemetry-exporter-otlp-proto-grpc installed.
    """
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n and n != "none"]
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    otlp = "otlp_proto_grpc" if protocol == "grpc" else "otlp_proto_http"
    return [otlp if name == "otlp" else name for name in names]


def _exporter(name: str) -> SpanExporter:
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        known = sorted(e.name for e in entry_points(group="opentelemetry_traces_exporter"))
        msg = f"OTEL_TRACES_EXPORTER: no span exporter {name!r} is installed (installed: {known})"
        raise ValueError(msg)
    exporter: SpanExporter = next(iter(found)).load()()
    return exporter


def new_provider(
    service: str,
    processors: Iterable[SpanProcessor] = (),
    *,
    max_links: int | None = None,
    environ: Mapping[str, str] = os.environ,
) -> TracerProvider:
    """A tracer provider for `service` (OTEL_SERVICE_NAME wins), NOT installed globally.

    `max_links`: the span link limit, unless OTEL_SPAN_LINK_COUNT_LIMIT sets one (the SDK's
    default, 128, would drop links of a batch with more records).
    """
    if "OTEL_SPAN_LINK_COUNT_LIMIT" in environ:
        max_links = None  # SpanLimits reads it
    resource = Resource.create({SERVICE_NAME: environ.get("OTEL_SERVICE_NAME") or service})
    provider = TracerProvider(resource=resource, span_limits=SpanLimits(max_links=max_links))
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


def from_environment(
    service: str, *, max_links: int | None = None, environ: Mapping[str, str] = os.environ
) -> TracerProvider | None:
    """The provider the OTEL_* variables describe, or None when tracing is off (the default).

    Spans are exported in batches off the event loop (BatchSpanProcessor, OTEL_BSP_*); the
    provider flushes them at interpreter exit.
    """
    names = exporter_names(environ)
    if not names:
        return None
    processors = [BatchSpanProcessor(_exporter(name)) for name in names]
    return new_provider(service, processors, max_links=max_links, environ=environ)


def tracer_of(provider: TracerProvider | None) -> Tracer | None:
    return provider.get_tracer(_INSTRUMENTATION) if provider is not None else None


def instrument_app(app: FastAPI, provider: TracerProvider) -> None:
    """Server spans for every request (route template as the span name), W3C context taken
    from the client's `traceparent` if it sent one. Must run before the app serves."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        excluded_urls=os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", DEFAULT_EXCLUDED_URLS),
        # The ASGI middleware's per-message "http send"/"http receive" spans say nothing here.
        exclude_spans=["receive", "send"],
    )


# --- the API: one producer span per order -------------------------------------------------


@contextmanager
def publishing(tracer: Tracer, topic: str, order_id: object) -> Iterator[tuple[Span, list[Header]]]:
    """The order's PRODUCER span (a child of the current, i.e. the request's, span) and the
    headers that carry its context to the worker. Exceptions end it with an error status."""
    attributes = {
        "messaging.system": _KAFKA,
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": topic,
        "messaging.message.id": str(order_id),
    }
    with tracer.start_as_current_span(
        PUBLISH_SPAN, kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        carrier: dict[str, str] = {}
        _W3C.inject(carrier)
        # traceparent only: a `tracestate` here would be the client's own (up to 32 entries of
        # 256 characters, continued from its request), copied into every record it places.
        traceparent = carrier.get(HEADER_TRACEPARENT)
        yield span, [(HEADER_TRACEPARENT, traceparent.encode())] if traceparent else []


def acknowledged(span: Span, partition: int, offset: int) -> None:
    """Where the broker put the order (known only after acks=all)."""
    span.set_attribute("messaging.destination.partition.id", str(partition))
    span.set_attribute("messaging.kafka.offset", offset)


# --- the worker: one consumer span per batch transaction ----------------------------------


def producer_context(headers: Sequence[Header] | None) -> trace.SpanContext | None:
    """The producer span a record's `traceparent`/`tracestate` name, if valid."""
    carrier = {
        name: value.decode("ascii", "replace")
        for name, value in headers or ()
        if name in TRACE_HEADERS
    }
    if HEADER_TRACEPARENT not in carrier:
        return None
    context = trace.get_current_span(_W3C.extract(carrier)).get_span_context()
    return context if context.is_valid else None


def links_to(records: Iterable[TracedRecord]) -> list[Link]:
    """A link per record whose producer span was sampled (a record produced by a tool has
    no context; one the API did not sample, e.g. under OTEL_TRACES_SAMPLER=traceidratio, would
    link to a span no backend has). No attributes on the links: the producer span already
    names the record's partition and offset, and attributes would double a link's cost."""
    links = []
    for record in records:
        context = producer_context(record.headers)
        if context is not None and context.trace_flags.sampled:
            links.append(Link(context))
    return links


def processing(
    tracer: Tracer | None, topic: str, group: str, records: Iterable[TracedRecord]
) -> AbstractContextManager[object]:
    """The batch's CONSUMER span, linked to every record's producer span; with tracing off,
    a no-op (and `records`, if a generator, is never iterated)."""
    if tracer is None:
        return nullcontext()
    records = list(records)
    links = links_to(records)
    attributes: Attributes = {
        "messaging.system": _KAFKA,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": topic,
        "messaging.consumer.group.name": group,
        "messaging.batch.message_count": len(records),
    }
    return tracer.start_as_current_span(
        PROCESS_SPAN, kind=SpanKind.CONSUMER, links=links, attributes=attributes
    )

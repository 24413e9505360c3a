"""app.tracing without services: configuration from OTEL_*, the headers that carry a producer
span's context, and the links a batch span makes from them."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app import contract, tracing
from app.errors import BrokerUnavailableError


@dataclass(frozen=True)
class FakeRecord:
    partition: int
    offset: int
    headers: Sequence[tuple[str, bytes]]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = tracing.new_provider("tests", [SimpleSpanProcessor(exporter)], max_links=1000)
    yield provider
    provider.shutdown()


def only(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    [span] = [span for span in spans if span.name == name]
    return span


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": ""}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp_proto_http"]),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            ["otlp_proto_grpc"],
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
            ["otlp_proto_grpc"],
        ),
        ({"OTEL_TRACES_EXPORTER": " Console , otlp "}, ["console", "otlp_proto_http"]),
    ],
)
def test_otel_traces_exporter_names_the_exporters(
    environ: dict[str, str], names: list[str]
) -> None:
    assert tracing.exporter_names(environ) == names


def test_tracing_is_off_unless_an_exporter_is_named() -> None:
    assert tracing.from_environment(tracing.API_SERVICE, environ={}) is None
    assert (
        tracing.from_environment(tracing.API_SERVICE, environ={"OTEL_TRACES_EXPORTER": "none"})
        is None
    )
    assert tracing.tracer_of(None) is None


def test_an_exporter_that_is_not_installed_is_refused_by_its_variable() -> None:
    with pytest.raises(ValueError, match=r"OTEL_TRACES_EXPORTER.*'zipkin'"):
        tracing.from_environment(tracing.API_SERVICE, environ={"OTEL_TRACES_EXPORTER": "zipkin"})


def test_the_otlp_exporter_is_installed_and_exports_in_batches() -> None:
    environ = {"OTEL_TRACES_EXPORTER": "otlp"}
    provider = tracing.from_environment(tracing.WORKER_SERVICE, environ=environ)
    assert provider is not None
    try:
        processors = provider._active_span_processor._span_processors
        assert [type(p) for p in processors] == [BatchSpanProcessor]
        assert provider.resource.attributes["service.name"] == "orders-worker"
    finally:
        provider.shutdown()


def test_otel_service_name_wins_over_the_default() -> None:
    environ = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "orders-api-eu"}
    provider = tracing.from_environment(tracing.API_SERVICE, environ=environ)
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == "orders-api-eu"
    finally:
        provider.shutdown()


def test_the_link_limit_fits_a_whole_batch_unless_otel_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SPAN_LINK_COUNT_LIMIT", raising=False)
    assert tracing.new_provider("tests", max_links=1000)._span_limits.max_links == 1000
    monkeypatch.setenv("OTEL_SPAN_LINK_COUNT_LIMIT", "50")  # SpanLimits reads os.environ
    assert (
        tracing.new_provider("tests", max_links=1000, environ=os.environ)._span_limits.max_links
        == 50
    )


# --- the hop ---------------------------------------------------------------------------------


def test_a_publish_span_puts_its_own_context_in_the_record_headers(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("tests")
    with (
        tracer.start_as_current_span("POST /orders", kind=SpanKind.SERVER) as request,
        tracing.publishing(tracer, "orders", "order-1") as (span, headers),
    ):
        tracing.acknowledged(span, 3, 41)
    publish = only(exporter.get_finished_spans(), tracing.PUBLISH_SPAN)
    context = publish.get_span_context()
    assert context is not None
    assert publish.kind is SpanKind.PRODUCER
    assert publish.parent is not None
    assert publish.parent.span_id == request.get_span_context().span_id
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert context.trace_flags.sampled
    assert dict(headers) == {contract.HEADER_TRACEPARENT: traceparent.encode()}
    assert publish.attributes == {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "orders",
        "messaging.message.id": "order-1",
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 41,
    }


def test_a_clients_tracestate_is_not_copied_into_the_record(provider: TracerProvider) -> None:
    """The request continues the client's trace, but its `tracestate` (up to 32 entries of 256
    characters, chosen by the client) stays out of every record it places."""
    tracer = provider.get_tracer("tests")
    client = TraceContextTextMapPropagator().extract(
        {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": ",".join(f"k{i}={'v' * 200}" for i in range(32)),
        }
    )
    with (
        tracer.start_as_current_span("POST /orders", context=client, kind=SpanKind.SERVER),
        tracing.publishing(tracer, "orders", "order-1") as (_, headers),
    ):
        pass
    assert [name for name, _ in headers] == [contract.HEADER_TRACEPARENT]
    assert dict(headers)[contract.HEADER_TRACEPARENT].startswith(
        b"00-0af7651916cd43dd8448eb211c80319c-"
    )


def test_a_refused_order_ends_its_publish_span_in_error(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("tests")
    with pytest.raises(BrokerUnavailableError), tracing.publishing(tracer, "orders", "order-1"):
        raise BrokerUnavailableError("no acknowledgement from Kafka within 3.0s")
    publish = only(exporter.get_finished_spans(), tracing.PUBLISH_SPAN)
    assert publish.status.status_code is StatusCode.ERROR
    assert [event.name for event in publish.events] == ["exception"]


def test_the_batch_span_links_every_record_to_its_producer_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("tests")
    records, produced = [], []
    for offset in range(1000):  # a whole WORKER_MAX_RECORDS batch: over the SDK's default 128
        with tracing.publishing(tracer, "orders", f"order-{offset}") as (span, headers):
            produced.append(span.get_span_context())
        records.append(FakeRecord(offset % 6, offset, [("request-id", b"r"), *headers]))
    records.append(FakeRecord(0, 1000, [("request-id", b"no trace, e.g. a tool's record")]))
    records.append(FakeRecord(0, 1001, [(contract.HEADER_TRACEPARENT, b"00-garbage")]))
    unsampled = f"00-{'1' * 32}-{'2' * 16}-00".encode()  # its span was never exported
    records.append(FakeRecord(0, 1002, [(contract.HEADER_TRACEPARENT, unsampled)]))
    with tracing.processing(tracer, "orders", "order-workers", iter(records)):
        pass
    process = only(exporter.get_finished_spans(), tracing.PROCESS_SPAN)
    assert process.kind is SpanKind.CONSUMER
    assert process.parent is None  # a trace of its own: batches have many parents, so links
    assert [(link.context.trace_id, link.context.span_id) for link in process.links] == [
        (context.trace_id, context.span_id) for context in produced
    ]
    assert process.attributes is not None
    assert process.attributes["messaging.batch.message_count"] == 1003
    assert process.attributes["messaging.consumer.group.name"] == "order-workers"


def test_the_sdk_default_would_drop_links_of_a_big_batch(exporter: InMemorySpanExporter) -> None:
    # Why new_provider takes max_links: with the SDK's default only 128 of 200 orders link.
    provider = tracing.new_provider("tests", [SimpleSpanProcessor(exporter)])
    tracer = provider.get_tracer("tests")
    records = []
    for offset in range(200):
        with tracing.publishing(tracer, "orders", f"order-{offset}") as (_, headers):
            records.append(FakeRecord(0, offset, headers))
    with tracing.processing(tracer, "orders", "order-workers", records):
        pass
    assert len(only(exporter.get_finished_spans(), tracing.PROCESS_SPAN).links) == 128
    provider.shutdown()


def test_with_tracing_off_a_batch_costs_nothing() -> None:
    def never_iterated() -> Iterator[FakeRecord]:
        raise AssertionError("records were read with tracing off")
        yield  # pragma: no cover

    with tracing.processing(None, "orders", "order-workers", never_iterated()) as span:
        assert span is None


def test_encode_adds_trace_headers_only_when_given() -> None:
    from tests.unit.test_contract import envelope

    _, plain = contract.encode(envelope(), "req-1")
    assert [name for name, _ in plain] == ["content-type", "schema-version", "request-id"]
    trace = [(contract.HEADER_TRACEPARENT, b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")]
    _, traced = contract.encode(envelope(), "req-1", trace)
    assert traced == [*plain, *trace]

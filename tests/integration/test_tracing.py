"""Traces across the hop, on the real broker and PostgreSQL: the worker's batch span links to
the API span that accepted each order; with tracing off, records carry no trace context."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind
from sqlalchemy.ext.asyncio import AsyncEngine

from app import contract, tracing
from app.api import create_app
from app.settings import Settings
from tests.integration.api_client import api_client, bearer, order_body, token_for
from tests.integration.kafka_tools import read_topic
from tests.integration.oracle import Expectations, wait_until_stored
from tests.integration.processes import OrdersProcess
from tests.integration.waiting import eventually
from tests.integration.worker_harness import worker_running

TRACE_HEADERS = {contract.HEADER_TRACEPARENT, contract.HEADER_TRACESTATE}


@pytest.fixture(autouse=True)
def otel_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the developer's shell exports, the app's own OTEL_* reading sees nothing."""
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME", "OTEL_SPAN_LINK_COUNT_LIMIT"):
        monkeypatch.delenv(name, raising=False)


class Recorded:
    """A provider (not the global one) whose finished spans are kept in memory."""

    def __init__(self, service: str, max_links: int | None = None) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = tracing.new_provider(
            service, [SimpleSpanProcessor(self.exporter)], max_links=max_links
        )

    def spans(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name == name]


@pytest.fixture
def api_spans() -> Iterator[Recorded]:
    recorded = Recorded(tracing.API_SERVICE)
    yield recorded
    recorded.provider.shutdown()


@pytest.fixture
def worker_spans(settings: Settings) -> Iterator[Recorded]:
    recorded = Recorded(tracing.WORKER_SERVICE, max_links=settings.worker.max_records)
    yield recorded
    recorded.provider.shutdown()


@asynccontextmanager
async def traced_api(
    settings: Settings, provider: TracerProvider
) -> AsyncIterator[httpx.AsyncClient]:
    """tests/integration/api_client.py's client, of an app traced by `provider`."""
    app = create_app(settings, tracer_provider=provider)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://orders", headers=bearer(token_for(settings))
        ) as client:
            yield client


def context_of(span: ReadableSpan) -> SpanContext:
    context = span.get_span_context()
    assert context is not None
    return context


def linked(spans: Sequence[ReadableSpan]) -> list[tuple[int, int]]:
    """(trace id, span id) of every link of these spans."""
    return [(link.context.trace_id, link.context.span_id) for span in spans for link in span.links]


async def test_the_worker_batch_span_links_to_the_api_span_that_accepted_each_order(
    settings: Settings,
    engine: AsyncEngine,
    run_id: str,
    api_spans: Recorded,
    worker_spans: Recorded,
) -> None:
    expected = Expectations()
    answers = []
    # A client that sends its own traceparent: the API's spans continue the client's trace.
    client_trace = uuid.uuid4().hex
    client_parent = "00f067aa0ba902b7"
    async with (
        traced_api(settings, api_spans.provider) as client,
        worker_running(settings, engine, worker_spans.provider),
    ):
        for n in range(4):
            customer = f"{run_id}-c{n % 2}"
            headers = {"traceparent": f"00-{client_trace}-{client_parent}-01"} if n == 3 else {}
            answer = await client.post("/orders", json=order_body(customer, n), headers=headers)
            assert answer.status_code == 202, answer.text
            answers.append(answer.json())
            expected.accept(customer, uuid.UUID(answer.json()["order_id"]))
        assert (await client.get("/healthz")).status_code == 200
        assert await wait_until_stored(engine, expected) == 4
        # The batch span ends after the Kafka commit that follows the PostgreSQL one.
        assert await eventually(
            lambda: len(linked(worker_spans.spans(tracing.PROCESS_SPAN))) >= 4, timeout=30
        )

    servers = {
        context_of(span).span_id: span
        for span in api_spans.exporter.get_finished_spans()
        if span.kind is SpanKind.SERVER
    }
    publishes = {
        str((span.attributes or {})["messaging.message.id"]): span
        for span in api_spans.spans(tracing.PUBLISH_SPAN)
    }
    links = linked(worker_spans.spans(tracing.PROCESS_SPAN))
    records = {
        (r.partition, r.offset): dict(r.headers)
        for r in await read_topic(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
    }
    for n, answer in enumerate(answers):
        publish = publishes[answer["order_id"]]
        producer = context_of(publish)
        assert publish.kind is SpanKind.PRODUCER
        # Its parent is the request's server span, in the same trace.
        assert publish.parent is not None
        server = servers[publish.parent.span_id]
        assert server.name == "POST /orders"
        assert context_of(server).trace_id == producer.trace_id
        if n == 3:
            assert producer.trace_id == int(client_trace, 16)
            assert server.parent is not None
            assert server.parent.span_id == int(client_parent, 16)
        attributes = publish.attributes or {}
        assert attributes["messaging.destination.name"] == settings.kafka.orders_topic
        assert attributes["messaging.destination.partition.id"] == str(answer["partition"])
        assert attributes["messaging.kafka.offset"] == answer["offset"]
        # The record carries that span's context...
        on_the_record = records[(answer["partition"], answer["offset"])]
        assert (
            on_the_record[contract.HEADER_TRACEPARENT]
            == (
                f"00-{producer.trace_id:032x}-{producer.span_id:016x}-{producer.trace_flags:02x}"
            ).encode()
        )
        # ...and a batch span of the worker links to it, once (no batch was retried here).
        assert links.count((producer.trace_id, producer.span_id)) == 1

    for process in worker_spans.spans(tracing.PROCESS_SPAN):
        assert process.kind is SpanKind.CONSUMER
        assert process.parent is None  # a trace of its own, linked to the orders' traces
        assert process.resource.attributes["service.name"] == "orders-worker"
        attributes = process.attributes or {}
        assert attributes["messaging.consumer.group.name"] == settings.worker.group_id
        assert attributes["messaging.batch.message_count"] == len(process.links)
    # Every request but the probe was traced.
    assert sorted(span.name for span in servers.values()) == ["POST /orders"] * 4


async def test_with_tracing_off_records_carry_no_trace_context(
    settings: Settings, run_id: str
) -> None:
    async with api_client(settings) as client:
        app = client._transport.app  # type: ignore[attr-defined]
        assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
        # Even a client's own traceparent goes no further than the HTTP request.
        answer = await client.post(
            "/orders",
            json=order_body(f"{run_id}-c"),
            headers={"traceparent": f"00-{uuid.uuid4().hex}-00f067aa0ba902b7-01"},
        )
    assert answer.status_code == 202, answer.text
    [record] = await read_topic(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
    names = {name for name, _ in record.headers}
    assert names == {"content-type", "schema-version", "request-id"}
    assert not names & TRACE_HEADERS


async def test_a_worker_process_exports_its_batch_spans_where_otel_variables_say(
    settings: Settings, engine: AsyncEngine, run_id: str, api_spans: Recorded, tmp_path: Path
) -> None:
    # The real `orders worker`, configured only by the standard variables (console exporter).
    worker = OrdersProcess(
        "worker",
        settings,
        tmp_path,
        OTEL_TRACES_EXPORTER="console",
        OTEL_SERVICE_NAME=f"orders-worker-{run_id}",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    expected = Expectations()
    try:
        async with traced_api(settings, api_spans.provider) as client:
            answer = await client.post("/orders", json=order_body(f"{run_id}-c"))
        assert answer.status_code == 202, answer.text
        expected.accept(f"{run_id}-c", uuid.UUID(answer.json()["order_id"]))
        assert await wait_until_stored(engine, expected) == 1
    finally:
        code = worker.stop()
    output = worker.log_path.read_text()
    assert code == 0, output[-2000:]
    [publish] = api_spans.spans(tracing.PUBLISH_SPAN)
    producer = context_of(publish)
    # ConsoleSpanExporter prints each span as JSON: the batch span, and its link to ours.
    assert f'"name": "{tracing.PROCESS_SPAN}"' in output, output[-2000:]
    assert f'"service.name": "orders-worker-{run_id}"' in output
    assert f'"span_id": "0x{producer.span_id:016x}"' in output

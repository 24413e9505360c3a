"""Issue 10: hostile input against the real stack, end to end.

The API runs as a real `orders api` process and two `orders worker` processes share the group,
on the real broker and PostgreSQL, with topics and a group of this test's own. hypothesis makes
the hostile values (tests/integration/hostile_values.py): arbitrary Unicode with NUL, C0/C1
controls, lone surrogates, bidi controls, RTL text, emoji and ZWJ sequences, texts of 63, 64
and 65 characters; quantities and prices at and past their bounds, as floats, strings, huge
integers, exponents, NaN and Infinity; members missing, extra, null, wrapped in arrays; headers
at 200 and 201 bytes. They go to the API over HTTP, and (second test) as records produced straight
to the orders topic, while ordinary customers order through the API at the same time.

The oracle:
- each answer is what the documented rules say (tests/integration/input_judge.py): 202 for a
  valid order, else a 4xx problem+json; never a 5xx. A hostile value that got a 202 and then
  jammed the workers (the NUL of issue 10) fails here first, and shrinks to its smallest form;
- nothing refused reached the topic (no record carries a refused request's X-Request-ID, and
  the API's records are exactly the orders answered 202, each where its 202 said);
- every order answered 202, every valid record and every ordinary order is stored once, as sent,
  each customer's in order (the ledger oracle), or is set aside (DLQ, quarantine) with its error;
  every invalid record is set aside; a record appended after its deadline is neither;
- no partition's stored position sits still for more than STALL_LIMIT_S while it has lag
  (sampled every 0.5 s), and in the end every position is its log end offset.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine
from uuid_utils.compat import uuid7

from app.settings import Settings
from tests.integration import hostile_values as hostile
from tests.integration import input_judge
from tests.integration.api_client import api_client, order_body
from tests.integration.direct import direct_order, started_producer
from tests.integration.kafka_tools import end_offsets, non_empty, read_topic
from tests.integration.live_stack import LiveStack, live_stack
from tests.integration.oracle import stored_positions
from tests.integration.stall_watch import StallRule, watching_for_stalls
from tests.integration.topic_audit import DIRECT_HEADER, EXPIRED, SET_ASIDE, STORED, Book, audit
from tests.integration.waiting import eventually
from tests.integration.worker_harness import worker_running

STALL_LIMIT_S = 5.0
HOSTILE_REQUESTS = 500
HOSTILE_RECORDS = 400
ORDINARY_PER_PARTITION = 2
ORDINARY_PAUSE_S = 0.1  # between one customer's orders
PROBLEM_JSON = "application/problem+json"
EXAMPLES = examples(
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
CONTENT_TYPES = ("application/json",) * 8 + (
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "text/plain",
    "application/jsonx",
    None,
)


class Tokens:
    """Unique, fixed-length header values of this run: a refused request's X-Request-ID can be
    looked for on the topic, and a header padded to 200 or 201 bytes stays that long."""

    LENGTH = 16

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._next = itertools.count()
        self.pattern = re.compile(re.escape(run_id) + r"[qk][0-9]{7}")

    def new(self, kind: str) -> str:
        return f"{self.run_id}{kind}{next(self._next):07d}"


@dataclass(frozen=True)
class HeaderPlan:
    kind: str  # "absent", "empty", or "token" (a unique token, then `tail`)
    tail: str = ""

    def value(self, tokens: Tokens, kind: str) -> bytes | None:
        if self.kind == "absent":
            return None
        if self.kind == "empty":
            return b""
        return (tokens.new(kind) + self.tail).encode("latin-1")


def _no_trailing_space(text: str) -> str:
    # Leading and trailing whitespace is not part of a header value (RFC 9110 5.5).
    return text[:-1] + "x" if text and text[-1] in " \t" else text


HEADER_TAILS = st.one_of(
    st.text(hostile.HEADER_CHARACTER, max_size=30),
    hostile.texts(hostile.HEADER_CHARACTER, 200 - Tokens.LENGTH, 201 - Tokens.LENGTH, 400),
).map(_no_trailing_space)


def header_plans(*kinds: str) -> st.SearchStrategy[HeaderPlan]:
    return st.sampled_from(kinds).flatmap(
        lambda kind: (
            st.builds(HeaderPlan, st.just(kind), HEADER_TAILS)
            if kind == "token"
            else st.just(HeaderPlan(kind))
        )
    )


@dataclass(frozen=True)
class HostileRequest:
    body: Any
    encoding: str
    content_type: str | None
    pad: int  # 0: the body as written; n: spaces up to API_MAX_BODY_BYTES + n - 1 bytes
    key: HeaderPlan
    request_id: HeaderPlan


def hostile_requests(run_id: str, pool: list[str]) -> st.SearchStrategy[HostileRequest]:
    return st.builds(
        HostileRequest,
        hostile.order_bodies(f"{run_id}.h", pool),
        st.sampled_from(hostile.ENCODINGS),
        st.sampled_from(CONTENT_TYPES),
        st.sampled_from((0,) * 10 + (1, 2)),
        header_plans("absent", "absent", "token", "token", "token", "empty"),
        header_plans(*("token",) * 7, "absent"),
    )


def in_thread(loop: asyncio.AbstractEventLoop) -> Callable[[Any], Any]:
    """Run a coroutine on the test's loop from hypothesis' thread, and wait for its result."""

    def call(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=60)

    return call


def assert_problem(response: httpx.Response, why: object) -> None:
    assert 400 <= response.status_code < 500, (
        f"refused by the rules ({why}) but answered {response.status_code}: {response.text:.500}"
    )
    assert response.headers["content-type"] == PROBLEM_JSON, response.headers
    problem = response.json()
    assert problem["status"] == response.status_code, problem
    assert isinstance(problem["title"], str), problem


# --- the stack, ordinary traffic, the watch ---------------------------------------------------


def ordinary_customers(run_id: str, partitions: int) -> list[str]:
    """ORDINARY_PER_PARTITION customers on each partition (Kafka's murmur2 of the key), so that
    a partition held up by a hostile record holds up someone."""
    everyone = list(range(partitions))
    found: dict[int, list[str]] = {p: [] for p in everyone}
    for n in itertools.count():
        customer = f"{run_id}-n{n:03d}"
        mine = found[DefaultPartitioner()(customer.encode(), everyone, everyone)]
        if len(mine) < ORDINARY_PER_PARTITION:
            mine.append(customer)
        if all(len(c) == ORDINARY_PER_PARTITION for c in found.values()):
            return [customer for customers in found.values() for customer in customers]
    raise AssertionError  # unreachable: count() never ends


@asynccontextmanager
async def ordinary_traffic(
    client: httpx.AsyncClient, book: Book, customers: list[str]
) -> AsyncIterator[None]:
    """Customers ordering one after another through the API (half with an Idempotency-Key),
    until the block ends; every one of their orders must get a 202 and be stored in order."""
    stop = asyncio.Event()

    async def one_customer(customer: str) -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            body = order_body(customer, n)
            headers = {"Idempotency-Key": f"{customer}-{n}"} if n % 2 else {}
            response = await client.post("/orders", json=body, headers=headers)
            assert response.status_code == 202, response.text
            accepted = response.json()
            where = (accepted["partition"], accepted["offset"])
            order_id = uuid.UUID(accepted["order_id"])
            book.api_order(input_judge.order(body), order_id, where, hostile=False)
            await asyncio.sleep(ORDINARY_PAUSE_S)

    customers_ordering = asyncio.gather(*(one_customer(c) for c in customers))
    try:
        yield
    finally:
        stop.set()
        await customers_ordering


@dataclass
class Run:
    stack: LiveStack
    client: httpx.AsyncClient
    watch: StallRule
    book: Book
    tokens: Tokens


async def read_back(client: httpx.AsyncClient, book: Book) -> list[str]:
    """Every stored hostile order, and each of its customers' pages, can be read: never a 5xx."""
    problems = []
    for order_id in set(book.hostile) - book.accepted_but_set_aside:
        response = await client.get(f"/orders/{order_id}")
        if response.status_code != 200:
            problems.append(f"GET /orders/{order_id}: {response.status_code} {response.text:.300}")
    for customer in set(book.hostile.values()):
        response = await client.get(f"/customers/{customer}/orders", params={"limit": 500})
        if response.status_code != 200:
            problems.append(f"GET /customers/{customer}/orders: {response.status_code}")
    return problems


@asynccontextmanager
async def hostile_run(
    settings: Settings, engine: AsyncEngine, run_id: str, log_dir: Path
) -> AsyncIterator[Run]:
    """The stack under watch, ordinary customers ordering meanwhile. After the block: the group
    caught up with no stall on the way, every record is accounted for, every stored hostile
    order reads back, and every process exits cleanly."""
    book, tokens = Book(run_id), Tokens(run_id)
    ordinary = ordinary_customers(run_id, settings.kafka.partitions)
    async with (
        live_stack(settings, log_dir) as stack,
        stack.client(timeout=30.0) as client,
    ):
        async with watching_for_stalls(engine, settings, STALL_LIMIT_S) as watch:
            async with ordinary_traffic(client, book, ordinary):
                yield Run(stack, client, watch, book, tokens)
            # Fails fast on a stall: a stalled partition will not catch up.
            await eventually(lambda: watch.caught_up or bool(watch.stalls), timeout=90)
        assert not watch.stalls, f"stalled: {list(watch.stalls.values())}\n{stack.logs()}"
        assert not watch.regressions, f"positions moved back: {watch.regressions}"
        assert watch.caught_up, f"positions {watch.positions}, ends {watch.ends}\n{stack.logs()}"
        problems = await audit(book, engine, settings, tokens.pattern)
        problems += await read_back(client, book)
        assert not problems, "\n".join(problems[:40])
    assert stack.clean_exit(), f"exit codes {stack.exit_codes}\n{stack.logs()}"
    print(
        f"answers {sorted(book.answers.items())}, {book.expected.total} orders stored "
        f"({len(book.hostile)} hostile), direct records "
        f"{sorted(Counter(outcome for outcome, _ in book.direct.values()).items())}, "
        f"{len(book.accepted_but_set_aside)} accepted then set aside, longest wait with lag "
        f"{watch.longest_wait_s:.1f}s in {watch.samples} samples"
    )


# --- the tests --------------------------------------------------------------------------------


async def test_hostile_requests_get_a_4xx_or_are_stored_and_stall_nothing(
    settings: Settings, engine: AsyncEngine, run_id: str, tmp_path: Path
) -> None:
    pool = [f"{run_id}.h{k}" for k in range(4)]  # customers that get many hostile orders
    max_body = settings.api.max_body_bytes
    async with hostile_run(settings, engine, run_id, tmp_path) as run:
        call = in_thread(asyncio.get_running_loop())
        book, tokens = run.book, run.tokens

        def post(data: bytes, headers: dict[str, bytes]) -> httpx.Response:
            response: httpx.Response = call(
                run.client.post("/orders", content=data, headers=headers)
            )
            book.answers[response.status_code] += 1
            return response

        @examples(EXAMPLES, max_examples=HOSTILE_REQUESTS)
        @given(hostile_requests(run_id, pool))
        def one_request(request: HostileRequest) -> None:
            data = hostile.to_json(request.body, request.encoding)
            if request.pad:
                data = data.ljust(max_body + request.pad - 1)
            headers = {
                name: value
                for name, value in [
                    ("Idempotency-Key", request.key.value(tokens, "k")),
                    ("X-Request-ID", request.request_id.value(tokens, "q")),
                    ("Content-Type", (request.content_type or "").encode() or None),
                ]
                if value is not None
            }
            response = post(data, headers)
            request_id = headers.get("X-Request-ID", b"").decode("latin-1")
            try:
                order = input_judge.request(data, request.content_type, headers, max_body)
            except input_judge.Refused as refused:
                book.silent_request_ids.update(tokens.pattern.findall(request_id))
                assert_problem(response, refused)
                return
            assert response.status_code == 202, (
                f"valid ({order}) but answered {response.status_code}: {response.text:.500}"
            )
            accepted = response.json()
            order_id = uuid.UUID(accepted["order_id"])
            assert response.headers["location"] == f"/orders/{order_id}"
            book.api_order(order, order_id, (accepted["partition"], accepted["offset"]))
            if request.key.kind == "token":  # every keyed 202: replayed, then its key reused
                replay_and_reuse(data, headers, accepted)

        def replay_and_reuse(data: bytes, headers: dict[str, bytes], accepted: Any) -> None:
            again = {**headers, "X-Request-ID": tokens.new("q").encode()}
            replayed = post(data, again)
            book.silent_request_ids.add(again["X-Request-ID"].decode())
            assert replayed.status_code == 202, replayed.text
            assert replayed.json() == accepted
            changed = input_judge.parse_json(data, bom=True)
            changed["items"][0]["quantity"] = 2 if changed["items"][0]["quantity"] == 1 else 1
            other = {**again, "X-Request-ID": tokens.new("q").encode()}
            reused = post(json.dumps(changed).encode(), other)
            book.silent_request_ids.add(other["X-Request-ID"].decode())
            assert reused.status_code == 422, reused.text
            assert_problem(reused, "an Idempotency-Key reused with another body")

        await asyncio.to_thread(one_request)
    assert book.answers[202] > HOSTILE_REQUESTS // 10, book.answers  # the valid side was tried
    assert book.request_ids_on_topic > 0  # the look-out for refused requests' ids does see ids


async def test_hostile_records_are_stored_or_set_aside_and_stall_nothing(
    settings: Settings, engine: AsyncEngine, run_id: str, tmp_path: Path
) -> None:
    pool = [f"{run_id}:d{k}" for k in range(4)]
    topic = settings.kafka.orders_topic
    producer = await started_producer(settings.kafka.bootstrap_servers)
    try:
        async with hostile_run(settings, engine, run_id, tmp_path) as run:
            call = in_thread(asyncio.get_running_loop())
            book, sent = run.book, itertools.count()

            @examples(EXAMPLES, max_examples=HOSTILE_RECORDS)
            @given(hostile.record_plans(f"{run_id}:d", pool))
            def one_record(plan: hostile.RecordPlan) -> None:
                value = plan.render(uuid7(), datetime.now(UTC))
                n, customer = next(sent), plan.customer_id
                if not isinstance(customer, str):  # no customer: among a pool customer's orders
                    customer = pool[n % len(pool)]
                key = customer.encode("utf-8", "surrogatepass")
                headers = [(DIRECT_HEADER, str(n).encode()), *plan.headers]
                meta = call(producer.send_and_wait(topic, value, key=key, headers=headers))
                where = (meta.partition, meta.offset)
                try:
                    envelope = input_judge.envelope(value)
                except input_judge.Refused as refused:
                    book.direct_record(where, SET_ASIDE, str(refused), None)
                    return
                appended = datetime.fromtimestamp(meta.timestamp / 1000, UTC)
                in_time = appended <= envelope.accept_by
                book.direct_record(where, STORED if in_time else EXPIRED, "valid", envelope)

            await asyncio.to_thread(one_record)
    finally:
        await producer.stop()
    outcomes = [outcome for outcome, _ in book.direct.values()]
    assert outcomes.count(STORED) > HOSTILE_RECORDS // 20, outcomes
    assert outcomes.count(SET_ASIDE) > HOSTILE_RECORDS // 2, outcomes


async def test_an_order_accepted_at_past_pythons_datetime_range_is_readable_or_set_aside(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    """Regression, found by this suite: an accepted_at valid in ISO 8601 but outside Python's
    years once in UTC was stored, and every read of that order then failed with a 500. The
    contract now refuses it (the worker sets it aside); a read that answers would pass too."""
    customer = f"{run_id}:t"
    orders = [direct_order(customer, n) for n in range(len(hostile.OUT_OF_RANGE_ACCEPTED_AT))]
    producer = await started_producer(settings.kafka.bootstrap_servers)
    try:
        for order, instant in zip(orders, hostile.OUT_OF_RANGE_ACCEPTED_AT, strict=True):
            envelope = {**json.loads(order.value), "accepted_at": instant}
            await producer.send_and_wait(
                settings.kafka.orders_topic, json.dumps(envelope).encode(), key=customer.encode()
            )
    finally:
        await producer.stop()
    topic = settings.kafka.orders_topic

    async def handled() -> bool:  # every record stored or set aside
        ends = non_empty(await end_offsets(settings.kafka.bootstrap_servers, topic))
        return await stored_positions(engine, settings.worker.group_id, topic) == ends

    async with worker_running(settings, engine):
        for _ in range(300):
            if await handled():
                break
            await asyncio.sleep(0.2)
    letters = await read_topic(settings.kafka.bootstrap_servers, settings.kafka.dlq_topic)
    set_aside = {json.loads(letter.value)["order_id"] for letter in letters}
    async with api_client(settings) as client:
        page = await client.get(f"/customers/{customer}/orders")
        reads = [await client.get(f"/orders/{order.order_id}") for order in orders]
    assert page.status_code == 200, page.text
    for order, read in zip(orders, reads, strict=True):
        assert read.status_code == (404 if str(order.order_id) in set_aside else 200), read.text

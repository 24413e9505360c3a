"""Account for every record on the orders topic once the group has caught up.

Each record is exactly one of: stored (a row with its partition and offset), set aside with its
error (a dead letter naming it as its origin, or a quarantined row), or, for an order the broker
appended after its acceptance deadline, neither. What each record should be is booked while the
test sends it (`Book`); `audit` compares that with what the topic, the dead-letter topic,
PostgreSQL and the ledger oracle hold, and returns every discrepancy as a line of text.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app import dlq_headers
from app.db.tables import orders, quarantined_records
from app.settings import Settings
from tests.integration import input_judge
from tests.integration.kafka_tools import read_topic
from tests.integration.oracle import Expectations, check_ledger, wait_until_stored

DIRECT_HEADER = "test-direct"  # marks records the test produced itself, bypassing the API
STORED, SET_ASIDE, EXPIRED = "stored", "set aside", "expired"


@dataclass
class Book:
    """What the test sent, and what must become of it."""

    run_id: str
    expected: Expectations = field(default_factory=Expectations)  # orders to store, in order
    lines: dict[uuid.UUID, tuple[input_judge.Line, ...]] = field(default_factory=dict)
    api_accepted: dict[uuid.UUID, tuple[int, int]] = field(default_factory=dict)
    # X-Request-IDs of requests answered anything but a first 202: none may reach the topic.
    silent_request_ids: set[str] = field(default_factory=set)
    direct: dict[tuple[int, int], tuple[str, str]] = field(default_factory=dict)  # outcome, why
    answers: Counter[int] = field(default_factory=Counter)
    hostile: dict[uuid.UUID, str] = field(default_factory=dict)  # to store: order id, customer
    # Found by the audit: orders answered 202 and then set aside (issue 10 allows it, with the
    # error), and how many records carried one of this run's X-Request-IDs.
    accepted_but_set_aside: set[uuid.UUID] = field(default_factory=set)
    request_ids_on_topic: int = 0

    def api_order(
        self,
        order: input_judge.Order,
        order_id: uuid.UUID,
        where: tuple[int, int],
        *,
        hostile: bool = True,
    ) -> None:
        assert order_id not in self.api_accepted, f"order id {order_id} given twice"
        self.api_accepted[order_id] = where
        self.expected.accept(order.customer_id, order_id)
        self.lines[order_id] = order.lines
        if hostile:
            self.hostile[order_id] = order.customer_id

    def direct_record(
        self, where: tuple[int, int], outcome: str, why: str, envelope: input_judge.Envelope | None
    ) -> None:
        self.direct[where] = (outcome, why)
        if envelope is not None and outcome == STORED:
            self.expected.accept(envelope.order.customer_id, envelope.order_id)
            self.lines[envelope.order_id] = envelope.order.lines
            self.hostile[envelope.order_id] = envelope.order.customer_id


@dataclass(frozen=True)
class SetAside:
    where: str  # "DLQ" or "quarantine"
    error_class: str
    error_message: str
    value: bytes | None


async def _set_aside(
    engine: AsyncEngine, settings: Settings
) -> dict[tuple[int, int], list[SetAside]]:
    found: dict[tuple[int, int], list[SetAside]] = defaultdict(list)
    for letter in await read_topic(settings.kafka.bootstrap_servers, settings.kafka.dlq_topic):
        headers = {
            name: value.decode() for name, value in letter.headers if name.startswith("dlq.")
        }
        origin = (int(headers[dlq_headers.H_PARTITION]), int(headers[dlq_headers.H_OFFSET]))
        found[origin].append(
            SetAside(
                "DLQ",
                headers.get(dlq_headers.H_ERROR_CLASS, ""),
                headers.get(dlq_headers.H_ERROR_MESSAGE, ""),
                letter.value,
            )
        )
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(quarantined_records).where(
                quarantined_records.c.group_id == settings.worker.group_id
            )
        )
        for row in rows:
            found[(row.partition, row.offset)].append(
                SetAside("quarantine", row.error_class, row.error_message, row.record_value)
            )
    return found


async def _stored(engine: AsyncEngine, run_id: str) -> dict[tuple[int, int], list[Any]]:
    """This run's stored orders by partition and offset (every customer id of a run begins
    with its run id; accepted_at is not read: see test_hostile_inputs' read-back test)."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(
                orders.c.order_id,
                orders.c.customer_id,
                orders.c["items"],
                orders.c.kafka_partition,
                orders.c.kafka_offset,
            ).where(orders.c.customer_id.startswith(run_id, autoescape=True))
        )
        found: dict[tuple[int, int], list[Any]] = defaultdict(list)
        for row in rows:
            found[(row.kafka_partition, row.kafka_offset)].append(row)
    return found


def _as_sent(row: Any, lines: tuple[input_judge.Line, ...]) -> bool:
    stored = [
        input_judge.Line(item["sku"], item["quantity"], Decimal(item["unit_price"]))
        for item in row.items
    ]
    return stored == list(lines)


async def audit(
    book: Book, engine: AsyncEngine, settings: Settings, request_id: re.Pattern[str]
) -> list[str]:
    """Every way the stack's end state differs from what was booked (empty: it holds)."""
    problems: list[str] = []
    records = await read_topic(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
    set_aside = await _set_aside(engine, settings)
    stored = await _stored(engine, book.run_id)
    api_on_topic: dict[uuid.UUID, tuple[int, int]] = {}
    accepted_but_set_aside = book.accepted_but_set_aside

    for record in records:
        where = (record.partition, record.offset)
        headers = dict(record.headers)
        rows, letters = stored.pop(where, []), set_aside.get(where, [])
        for token in request_id.findall(headers.get("request-id", b"").decode("latin-1")):
            book.request_ids_on_topic += 1
            if token in book.silent_request_ids:
                problems.append(f"{where}: request {token} was refused but produced this record")
        if DIRECT_HEADER in headers:
            outcome, why = book.direct.get(where, ("unbooked", ""))
            got = STORED if rows else SET_ASIDE if letters else EXPIRED
            if outcome != got or len(rows) + bool(letters) > 1:
                reasons = [(letter.where, letter.error_message) for letter in letters]
                problems.append(
                    f"{where}: direct record should be {outcome} ({why}), is {got} "
                    f"(rows {len(rows)}, set aside {reasons}): {record.value!a:.300}"
                )
            continue
        order_id = uuid.UUID(json.loads(record.value)["order_id"])
        api_on_topic[order_id] = where
        if order_id not in book.api_accepted:
            problems.append(
                f"{where}: order {order_id} is on the topic but no request got a 202 for it"
            )
        elif rows and letters:
            problems.append(f"{where}: order {order_id} both stored and set aside")
        elif letters:
            accepted_but_set_aside.add(order_id)  # allowed by issue 10, if it says why
        elif len(rows) != 1:
            problems.append(f"{where}: order {order_id} answered 202 is stored {len(rows)} times")

    for where, rows in stored.items():
        problems.append(f"{where}: stored but not on the topic: {[r.order_id for r in rows]}")
    for where, letters in set_aside.items():
        for letter in letters:
            if not (letter.error_class and letter.error_message):
                problems.append(f"{where}: set aside ({letter.where}) without its error")
    missing = set(book.api_accepted) - set(api_on_topic)
    if missing:
        problems.append(
            f"{len(missing)} orders answered 202 are not on the topic: {sorted(missing)[:5]}"
        )
    for order_id, where in book.api_accepted.items():
        if order_id in api_on_topic and api_on_topic[order_id] != where:
            problems.append(
                f"order {order_id}: 202 said {where}, the topic has it at {api_on_topic[order_id]}"
            )

    expected = Expectations()
    for customer, ids in book.expected.accepted.items():
        for order_id in ids:
            if order_id not in accepted_but_set_aside:
                expected.accept(customer, order_id)
    await wait_until_stored(engine, expected, timeout=30)
    report = await check_ledger(engine, expected)
    if not report.holds:
        problems.append(f"ledger: {report}")
    stored_rows = {
        row.order_id: row for rows in (await _stored(engine, book.run_id)).values() for row in rows
    }
    for order_id, lines in book.lines.items():
        row = stored_rows.get(order_id)
        if row is not None and not _as_sent(row, lines):
            problems.append(f"order {order_id} stored as {row.items!a}, sent as {lines!a}")
    return problems

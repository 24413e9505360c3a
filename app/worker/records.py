"""From fetched Kafka records to a prepared batch: orders to store, poison, and offset spans.

Pure rules, no I/O: which records are orders, which are poison (dead-lettered), which reached
the log after their acceptance deadline (skipped: the client was answered 503), and which
offsets of each partition the batch covers, including the offsets with no record at all.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from app import contract, dlq_headers
from app.db.positions import PartitionSpan
from app.errors import PoisonRecordError
from app.worker.fetch_positions import Batch, Bounds, Record
from app.worker.order_store import IncomingOrder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OffsetGap:
    """Offsets [start, end) of a partition that a fetch passed with no record to process:
    transaction markers, aborted transactions (read_committed hides them), compacted records."""

    partition: int
    start: int
    end: int


@dataclass(frozen=True)
class Poison:
    record: Record
    error: Exception


@dataclass(frozen=True)
class PreparedBatch:
    """A fetched batch, parsed: its orders, its poison records, and the span of each partition."""

    orders: list[IncomingOrder]
    poison: list[Poison]
    spans: list[PartitionSpan]
    gaps: list[OffsetGap] = field(default_factory=list)
    expired: list[IncomingOrder] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(span.end - span.start for span in self.spans)

    def records(self) -> Iterator[Record]:
        """Every record of the batch: its orders, the expired ones, the poison."""
        for order in itertools.chain(self.orders, self.expired):
            yield order.record
        for poison in self.poison:
            yield poison.record

    def only(self, partitions: set[int]) -> PreparedBatch:
        """The part of the batch on these partitions (those still assigned, or not fenced)."""
        if all(span.partition in partitions for span in self.spans):
            return self
        return PreparedBatch(
            orders=[order for order in self.orders if order.partition in partitions],
            poison=[p for p in self.poison if p.record.partition in partitions],
            spans=[span for span in self.spans if span.partition in partitions],
            gaps=[gap for gap in self.gaps if gap.partition in partitions],
            expired=[e for e in self.expired if e.partition in partitions],
        )


def span_of(
    records: Sequence[Record], fetched_from: int | None, fetched_to: int | None
) -> PartitionSpan:
    """The offsets a partition's records cover.

    `fetched_from`/`fetched_to` are the consumer's positions just before and after the fetch
    that returned them, when known. They differ from the records' own offsets exactly where
    Kafka passed offsets with no visible record; without them, a batch that begins after such
    a gap would never start where the stored position says, and the fence would refuse it
    forever. Unknown (a seek or rebalance happened during the fetch), the records' own
    offsets are used: the fence then corrects the position and the next fetch is exact.
    """
    first, last = records[0].offset, records[-1].offset
    start = fetched_from if fetched_from is not None and fetched_from <= first else first
    end = fetched_to if fetched_to is not None and fetched_to > last else last + 1
    return PartitionSpan(records[0].partition, start, end)


def gaps_in(span: PartitionSpan, offsets: Iterable[int]) -> list[OffsetGap]:
    """The ranges of `span` that hold none of `offsets` (ascending)."""
    gaps, expected = [], span.start
    for offset in offsets:
        if offset > expected:
            gaps.append(OffsetGap(span.partition, expected, offset))
        expected = offset + 1
    if span.end > expected:
        gaps.append(OffsetGap(span.partition, expected, span.end))
    return gaps


def append_time(record: Record) -> tuple[int, int]:
    """When the broker first took this record, and by whose clock.

    A dead letter that an operator sent back (`orders dlq replay`) carries the append time of
    its first journey; the replay's own time would make every replayed order look late. A
    record replayed more than once may carry several such headers: the earliest is the first
    journey, and it alone decides.
    """
    headers = record.headers or ()
    if not any(name == dlq_headers.H_REPLAYED_FROM for name, _ in headers):
        return record.timestamp, record.timestamp_type
    times = [_int_or_none(v) for name, v in headers if name == dlq_headers.H_TIMESTAMP]
    types = [_int_or_none(v) for name, v in headers if name == dlq_headers.H_TIMESTAMP_TYPE]
    journeys = [
        (ts, kind if kind is not None else 0)
        for ts, kind in itertools.zip_longest(times, types)
        if ts is not None
    ]
    if not journeys:
        return record.timestamp, record.timestamp_type
    return min(journeys)


def _int_or_none(raw: bytes) -> int | None:
    try:
        return int(raw)
    except ValueError:
        return None


def parse(record: Record) -> contract.OrderEnvelope:
    """The record's order, or PoisonRecordError if it can never be one."""
    try:
        return contract.decode(record.value)
    except (ValueError, OverflowError) as exc:  # raised beyond the contract's own validation
        msg = f"unusable record: {exc}"
        raise PoisonRecordError(msg) from exc


def in_time(envelope: contract.OrderEnvelope, record: Record) -> bool:
    try:
        return contract.appended_in_time(envelope, *append_time(record))
    except (ValueError, OverflowError) as exc:  # e.g. a deadline in year 1
        msg = f"unusable accept_by: {exc}"
        raise PoisonRecordError(msg) from exc


# Parsing yields to the event loop this often, so that the batch being stored meanwhile can send
# its next statement instead of waiting for the whole parse (the loop has one thread).
PARSE_SLICE = 100


async def prepare(batch: Batch, bounds: Bounds) -> PreparedBatch:
    """Parse a fetched batch; `bounds` holds each partition's fetch positions (see `span_of`)."""
    prepared = PreparedBatch([], [], [])
    for tp, (fetched_from, fetched_to) in bounds.items():
        if batch.get(tp) or fetched_from is None or fetched_to is None:
            continue
        if fetched_to > fetched_from:  # offsets passed, no record: the span is all gap
            prepared.spans.append(PartitionSpan(tp.partition, fetched_from, fetched_to))
            prepared.gaps.append(OffsetGap(tp.partition, fetched_from, fetched_to))
    for tp, records in batch.items():
        if not records:
            continue
        span = span_of(records, *bounds.get(tp, (None, None)))
        prepared.spans.append(span)
        prepared.gaps.extend(gaps_in(span, (record.offset for record in records)))
        for first in range(0, len(records), PARSE_SLICE):
            await asyncio.sleep(0)
            _sort(records[first : first + PARSE_SLICE], prepared)
    return prepared


def _sort(records: Iterable[Record], into: PreparedBatch) -> None:
    for record in records:
        try:
            envelope = parse(record)
            order = IncomingOrder(envelope, record.partition, record.offset, record)
            if not in_time(envelope, record):
                # The API answered 503 for it (it reached the log too late): never processed.
                into.expired.append(order)
                continue
        except PoisonRecordError as exc:
            into.poison.append(Poison(record, exc))
            continue
        into.orders.append(order)


def log_expired(expired: Sequence[IncomingOrder]) -> None:
    for envelope in (order.envelope for order in expired):
        log.warning(
            "order %s of customer %s reached Kafka after its acceptance deadline %s "
            "(the client was answered 503): not processed",
            envelope.order_id,
            envelope.customer_id,
            envelope.accept_by.isoformat(),
        )

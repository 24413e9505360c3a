"""Every statement on `quarantined_records` and `skipped_offsets`: what a group passed without
storing an order, and why.

The worker writes both inside its batch transaction, the one that moves its position past the
records (`insert_quarantined`, `record_skipped`): a redone batch writes nothing twice. The
operator commands read them (`orders dlq list`, `orders skipped`) and replay a quarantined record
(`find_quarantined`, `mark_replayed`). All of it lives here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import quarantined_records, skipped_offsets

Header = tuple[str, bytes | None]


@dataclass(frozen=True)
class QuarantinedRecord:
    """A record kept whole in PostgreSQL, with where it came from and why it is here."""

    group_id: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]
    timestamp: int
    timestamp_type: int
    error_class: str
    error_message: str
    reason: str
    worker: str

    @property
    def origin(self) -> str:
        return f"{self.topic}/{self.partition}@{self.offset}"


def quarantined_row(
    group_id: str,
    record: Any,
    error: BaseException,
    reason: str,
    worker: str,
    *,
    message: str | None = None,
) -> QuarantinedRecord:
    """What to keep of an aiokafka ConsumerRecord (its timestamp as the broker gave it) that
    failed with `error`; `message` defaults to the error's first line."""
    lines = str(error).split("\n")
    return QuarantinedRecord(
        group_id=group_id,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=tuple((storable(name), value) for name, value in record.headers or ()),
        timestamp=record.timestamp,
        timestamp_type=record.timestamp_type,
        error_class=type(error).__name__,
        error_message=storable(message if message is not None else lines[0])[:1000],
        reason=storable(reason),
        worker=worker,
    )


def storable(text: str) -> str:
    """Text PostgreSQL's `text` takes: no NUL, no lone surrogate (both escaped, visibly).

    What goes into the quarantine comes from hostile records (header names, errors that echo
    their input); a refusal here would fail the very transaction that sets them aside."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


@dataclass(frozen=True)
class StoredQuarantine:
    """A quarantined record as stored: its id, when it came, and when it was replayed."""

    id: int
    record: QuarantinedRecord
    quarantined_at: datetime
    replayed_at: datetime | None


@dataclass(frozen=True)
class SkippedRange:
    """Offsets [from_offset, to_offset) of a partition that held no record to process."""

    partition: int
    from_offset: int
    to_offset: int
    reason: str
    worker: str
    detected_at: datetime

    @property
    def count(self) -> int:
        return self.to_offset - self.from_offset


@dataclass(frozen=True)
class SkippedTotal:
    partition: int
    reason: str
    ranges: int
    offsets: int


async def insert_quarantined(connection: AsyncConnection, rows: Sequence[QuarantinedRecord]) -> int:
    """Keep these records; one already kept for its group and offset is left as it is (a redone
    batch quarantines the same records again). Returns how many rows are new."""
    if not rows:
        return 0
    statement = (
        insert(quarantined_records)
        .values([_columns(row) for row in rows])
        .on_conflict_do_nothing(index_elements=["group_id", "topic", "partition", "offset"])
        .returning(quarantined_records.c.id)
    )
    return len((await connection.execute(statement)).all())


def _columns(row: QuarantinedRecord) -> dict[str, Any]:
    return {
        "group_id": row.group_id,
        "topic": row.topic,
        "partition": row.partition,
        "offset": row.offset,
        "record_key": row.key,
        "record_value": row.value,
        "header_names": [name for name, _ in row.headers],
        "header_values": [value for _, value in row.headers],
        "record_timestamp": row.timestamp,
        "record_timestamp_type": row.timestamp_type,
        "error_class": row.error_class,
        "error_message": row.error_message,
        "reason": row.reason,
        "worker": row.worker,
    }


async def record_skipped(
    connection: AsyncConnection,
    group_id: str,
    topic: str,
    partition: int,
    from_offset: int,
    to_offset: int,
    reason: str,
    worker: str,
) -> bool:
    """Note that offsets [from_offset, to_offset) held nothing to process (`to_offset` is the
    next offset after the gap). A range already noted from the same offset is left as it is.
    Returns whether the row is new."""
    new = await record_skipped_ranges(
        connection, group_id, topic, [(partition, from_offset, to_offset)], reason, worker
    )
    return new == 1


async def record_skipped_ranges(
    connection: AsyncConnection,
    group_id: str,
    topic: str,
    ranges: Sequence[tuple[int, int, int]],
    reason: str,
    worker: str,
) -> int:
    """`record_skipped` for many (partition, from_offset, to_offset) ranges, in one statement
    (a batch from a transactional producer holds a marker after every transaction); how many
    rows are new."""
    if not ranges:
        return 0
    rows = [
        {
            "group_id": group_id,
            "topic": topic,
            "partition": partition,
            "from_offset": start,
            "to_offset": end,
            "reason": reason,
            "worker": worker,
        }
        for partition, start, end in ranges
    ]
    statement = (
        insert(skipped_offsets)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["group_id", "topic", "partition", "from_offset"])
        .returning(skipped_offsets.c.from_offset)
    )
    return len((await connection.execute(statement)).all())


async def list_quarantined(
    connection: AsyncConnection,
    group_id: str,
    topic: str,
    *,
    include_replayed: bool = False,
    limit: int = 50,
) -> tuple[list[StoredQuarantine], int]:
    """The oldest quarantined records of a group on a topic, and how many there are in all."""
    scope = [quarantined_records.c.group_id == group_id, quarantined_records.c.topic == topic]
    if not include_replayed:
        scope.append(quarantined_records.c.replayed_at.is_(None))
    query = select(quarantined_records).where(*scope)
    result = await connection.execute(query.order_by(quarantined_records.c.id).limit(limit))
    total = await connection.scalar(
        select(func.count()).select_from(quarantined_records).where(*scope)
    )
    return [_stored(row) for row in result.mappings()], int(total or 0)


async def find_quarantined(
    connection: AsyncConnection, record_id: int, *, lock: bool = False
) -> StoredQuarantine | None:
    """One quarantined record; with `lock`, locked until the caller's transaction ends (a replay
    and its mark are one decision: two operators replaying the same id queue behind each other)."""
    query = select(quarantined_records).where(quarantined_records.c.id == record_id)
    if lock:
        query = query.with_for_update()
    row = (await connection.execute(query)).mappings().first()
    return None if row is None else _stored(row)


async def mark_replayed(connection: AsyncConnection, record_id: int) -> None:
    await connection.execute(
        update(quarantined_records)
        .where(quarantined_records.c.id == record_id)
        .values(replayed_at=func.now())
    )


def _stored(row: Any) -> StoredQuarantine:
    record = QuarantinedRecord(
        group_id=row["group_id"],
        topic=row["topic"],
        partition=row["partition"],
        offset=row["offset"],
        key=row["record_key"],
        value=row["record_value"],
        headers=tuple(zip(row["header_names"], row["header_values"], strict=True)),
        timestamp=row["record_timestamp"],
        timestamp_type=row["record_timestamp_type"],
        error_class=row["error_class"],
        error_message=row["error_message"],
        reason=row["reason"],
        worker=row["worker"],
    )
    return StoredQuarantine(row["id"], record, row["quarantined_at"], row["replayed_at"])


async def list_skipped(
    connection: AsyncConnection,
    group_id: str,
    topic: str,
    partitions: Sequence[int] | None = None,
    limit: int = 100,
) -> list[SkippedRange]:
    """The skipped ranges of a group on a topic, in partition and offset order."""
    query = select(skipped_offsets).where(*_skipped_scope(group_id, topic, partitions))
    query = query.order_by(skipped_offsets.c.partition, skipped_offsets.c.from_offset)
    result = await connection.execute(query.limit(limit))
    return [
        SkippedRange(
            row.partition, row.from_offset, row.to_offset, row.reason, row.worker, row.detected_at
        )
        for row in result
    ]


async def skipped_totals(
    connection: AsyncConnection,
    group_id: str,
    topic: str,
    partitions: Sequence[int] | None = None,
) -> list[SkippedTotal]:
    """Per partition and reason: how many ranges were skipped and how many offsets they span."""
    t = skipped_offsets.c
    query = (
        select(
            t.partition,
            t.reason,
            func.count().label("ranges"),
            func.sum(t.to_offset - t.from_offset).label("offsets"),
        )
        .where(*_skipped_scope(group_id, topic, partitions))
        .group_by(t.partition, t.reason)
        .order_by(t.partition, t.reason)
    )
    result = await connection.execute(query)
    return [SkippedTotal(r.partition, r.reason, r.ranges, int(r.offsets)) for r in result]


def _skipped_scope(group_id: str, topic: str, partitions: Sequence[int] | None) -> list[Any]:
    scope = [skipped_offsets.c.group_id == group_id, skipped_offsets.c.topic == topic]
    if partitions:
        scope.append(skipped_offsets.c.partition.in_(list(partitions)))
    return scope

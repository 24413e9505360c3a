"""Every statement on the lab's tables (migration 0004): the modes' writes, the lab's reads.

`lab_deliveries` has no unique constraint on the event, on purpose: what makes a mode store an
event once or twice is the mode, not the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, INTEGER, TEXT
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.errors import OrdersError
from app.lab.semantics.tally import Received


@dataclass(frozen=True)
class Delivery:
    """One record a mode's consumer stores."""

    run_id: str
    mode: str
    event_id: int
    key: str
    seq: int
    sent_at: float
    writer: str

    def row(self) -> dict[str, object]:
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "event_id": self.event_id,
            "key": self.key,
            "seq": self.seq,
            "sent_at": datetime.fromtimestamp(self.sent_at, UTC),
            "writer": self.writer,
        }


_INSERT = text(
    """
    INSERT INTO lab_deliveries (run_id, mode, event_id, key, seq, sent_at, writer)
    VALUES (:run_id, :mode, :event_id, :key, :seq, :sent_at, :writer)
    """
)

# Absorbs an event already stored. Without a unique constraint two transactions could both
# insert it, but only one of them can move the partition's position (the fence), so the other
# rolls back: the position's row lock is what serializes them.
_INSERT_IF_NEW = text(
    """
    INSERT INTO lab_deliveries (run_id, mode, event_id, key, seq, sent_at, writer)
    SELECT :run_id, :mode, :event_id, :key, :seq, :sent_at, :writer
    WHERE NOT EXISTS (
        SELECT FROM lab_deliveries
        WHERE run_id = :run_id AND mode = :mode AND event_id = :event_id
    )
    """
)

_INIT_POSITIONS = text(
    """
    INSERT INTO lab_positions (run_id, mode, partition, next_offset)
    SELECT :run_id, :mode, p, 0 FROM unnest(:partitions) AS p
    ON CONFLICT DO NOTHING
    """
).bindparams(bindparam("partitions", type_=ARRAY(INTEGER)))

_READ_POSITIONS = text(
    "SELECT partition, next_offset FROM lab_positions WHERE run_id = :run_id AND mode = :mode"
)

# The fence: the position moves only from where the batch began. A batch that began anywhere
# else (its member was frozen while another redid the batch) changes nothing.
_MOVE_POSITION = text(
    """
    UPDATE lab_positions SET next_offset = :end
    WHERE run_id = :run_id AND mode = :mode AND partition = :partition AND next_offset = :start
    """
)

_READ_DELIVERIES = text(
    """
    SELECT event_id, key, seq, extract(epoch FROM sent_at)::float8 AS sent_at,
           extract(epoch FROM stored_at)::float8 AS stored_at, writer
    FROM lab_deliveries WHERE run_id = :run_id AND mode = :mode ORDER BY id
    """
)


async def insert(connection: AsyncConnection, delivery: Delivery) -> None:
    await connection.execute(_INSERT, delivery.row())


async def insert_if_new(connection: AsyncConnection, delivery: Delivery) -> bool:
    """Store the event unless this run's mode stored it already; whether it was stored now."""
    result = await connection.execute(_INSERT_IF_NEW, delivery.row())
    return bool(result.rowcount)


async def positions(
    connection: AsyncConnection, run_id: str, mode: str, partitions: Sequence[int]
) -> dict[int, int]:
    """The mode's stored next offset of each partition (a partition never seen: 0)."""
    scope = {"run_id": run_id, "mode": mode}
    await connection.execute(_INIT_POSITIONS, {**scope, "partitions": list(partitions)})
    result = await connection.execute(_READ_POSITIONS, scope)
    return {row.partition: row.next_offset for row in result}


async def read_positions(engine: AsyncEngine, run_id: str, mode: str) -> dict[int, int]:
    """The mode's stored next offset of each partition it has stored (the lab's view)."""
    async with engine.connect() as connection:
        result = await connection.execute(_READ_POSITIONS, {"run_id": run_id, "mode": mode})
        return {row.partition: row.next_offset for row in result}


async def move_position(
    connection: AsyncConnection, run_id: str, mode: str, partition: int, start: int, end: int
) -> bool:
    """Move the partition to `end` if it stands at `start`; False: fenced, nothing moved."""
    result = await connection.execute(
        _MOVE_POSITION,
        {"run_id": run_id, "mode": mode, "partition": partition, "start": start, "end": end},
    )
    return bool(result.rowcount)


async def deliveries(engine: AsyncEngine, run_id: str, mode: str) -> list[Received]:
    """What the mode stored, in the order it was stored."""
    async with engine.connect() as connection:
        result = await connection.execute(_READ_DELIVERIES, {"run_id": run_id, "mode": mode})
        return [
            Received(row.event_id, row.key, row.seq, row.sent_at, row.stored_at, row.writer)
            for row in result
        ]


_REMOVE_RUNS = [
    text(f"DELETE FROM {table} WHERE run_id = ANY(:run_ids)").bindparams(
        bindparam("run_ids", type_=ARRAY(TEXT))
    )
    for table in ("lab_deliveries", "lab_positions")
]


async def remove_runs(engine: AsyncEngine, run_ids: Sequence[str]) -> None:
    """Delete these runs' rows (the lab keeps them only with --keep)."""
    async with engine.begin() as connection:
        for statement in _REMOVE_RUNS:
            await connection.execute(statement, {"run_ids": list(run_ids)})


async def check_tables(engine: AsyncEngine) -> None:
    """OrdersError unless the lab's tables are there (migration 0004) and the role may use them."""
    try:
        async with engine.connect() as connection:
            for table in ("lab_deliveries", "lab_positions"):
                await connection.execute(text(f"SELECT FROM {table} LIMIT 0"))
    except DBAPIError as exc:
        msg = (
            f"the lab's tables cannot be used ({exc.orig!r}): run `orders migrate` "
            "(migration 0004 creates lab_deliveries and lab_positions)"
        )
        raise OrdersError(msg) from exc

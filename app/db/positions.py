"""Every statement on `consumer_positions`: where each consumer group stands on each partition.

PostgreSQL, not Kafka, is the source of truth for the worker group's offsets. The worker claims
and moves positions inside its batch transaction (app.worker.order_store); the operator commands
read them (`orders lag`), set them (`orders offsets reset`), delete a group's (`orders offsets
delete`) and create those of new partitions (`orders topics grow`). All of it lives here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, BIGINT, INTEGER
from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True)
class PartitionSpan:
    """The offsets one batch covers on one partition: [start, end)."""

    partition: int
    start: int
    end: int


_INIT_POSITIONS = text(
    """
    INSERT INTO consumer_positions (group_id, topic, partition, next_offset, owner)
    SELECT :group_id, :topic, p, o, :owner FROM unnest(:partitions, :starts) AS t(p, o)
    ORDER BY p
    ON CONFLICT DO NOTHING
    """
).bindparams(
    bindparam("partitions", type_=ARRAY(INTEGER)), bindparam("starts", type_=ARRAY(BIGINT))
)

# Rows are locked in partition order by every member, so two members whose batches share
# partitions queue behind each other instead of deadlocking.
_LOCK_POSITIONS = text(
    """
    SELECT partition, next_offset FROM consumer_positions
    WHERE group_id = :group_id AND topic = :topic AND partition = ANY(:partitions)
    ORDER BY partition
    FOR UPDATE
    """
).bindparams(bindparam("partitions", type_=ARRAY(INTEGER)))

_ADVANCE_POSITIONS = text(
    """
    UPDATE consumer_positions AS p
    SET next_offset = t.next_offset, owner = :owner, updated_at = now()
    FROM unnest(:partitions, :ends) AS t(partition, next_offset)
    WHERE p.group_id = :group_id AND p.topic = :topic AND p.partition = t.partition
    """
).bindparams(bindparam("partitions", type_=ARRAY(INTEGER)), bindparam("ends", type_=ARRAY(BIGINT)))

_READ_POSITIONS = text(
    """
    SELECT partition, next_offset FROM consumer_positions
    WHERE group_id = :group_id AND topic = :topic AND partition = ANY(:partitions)
    """
).bindparams(bindparam("partitions", type_=ARRAY(INTEGER)))

# The age is computed by PostgreSQL, on its own clock, from the instant it wrote the position:
# the operator's clock is never compared with the database's. updated_at moves only when a batch
# advances the position (or an operator sets it), so the age is how long the position stood still.
_READ_POSITION_AGES = text(
    """
    SELECT partition, next_offset, owner,
           extract(epoch FROM now() - updated_at)::float8 AS idle_s
    FROM consumer_positions
    WHERE group_id = :group_id AND topic = :topic AND partition = ANY(:partitions)
    """
).bindparams(bindparam("partitions", type_=ARRAY(INTEGER)))

_SET_POSITION = text(
    """
    INSERT INTO consumer_positions (group_id, topic, partition, next_offset, owner)
    VALUES (:group_id, :topic, :partition, :next_offset, :owner)
    ON CONFLICT (group_id, topic, partition)
    DO UPDATE SET next_offset = EXCLUDED.next_offset, owner = EXCLUDED.owner, updated_at = now()
    """
)


async def read_positions(
    connection: AsyncConnection, group_id: str, topic: str, partitions: Sequence[int]
) -> dict[int, int]:
    """Stored next offsets for these partitions (missing ones were never processed)."""
    result = await connection.execute(
        _READ_POSITIONS, {"group_id": group_id, "topic": topic, "partitions": list(partitions)}
    )
    return {row.partition: row.next_offset for row in result}


@dataclass(frozen=True)
class StoredPosition:
    """A partition's stored position, who stored it, and how long ago (PostgreSQL's clock)."""

    partition: int
    next_offset: int
    owner: str
    idle_s: float


async def read_position_ages(
    connection: AsyncConnection, group_id: str, topic: str, partitions: Sequence[int]
) -> dict[int, StoredPosition]:
    """Stored positions with their owner and age (missing partitions were never processed)."""
    result = await connection.execute(
        _READ_POSITION_AGES,
        {"group_id": group_id, "topic": topic, "partitions": list(partitions)},
    )
    return {
        row.partition: StoredPosition(
            row.partition, row.next_offset, row.owner, max(0.0, row.idle_s)
        )
        for row in result
    }


async def claim_partitions(
    connection: AsyncConnection,
    *,
    group_id: str,
    topic: str,
    owner: str,
    spans: Sequence[PartitionSpan],
) -> dict[int, int]:
    """Lock this group's positions of the batch's partitions, in partition order.

    Returns every claimed partition's stored next offset (a partition never seen before is
    stored at its span's start first). The locks are held until the caller's transaction ends.
    """
    ordered = sorted(spans, key=lambda span: span.partition)
    scope = {"group_id": group_id, "topic": topic, "owner": owner}
    partitions = [span.partition for span in ordered]
    await connection.execute(
        _INIT_POSITIONS, {**scope, "partitions": partitions, "starts": [s.start for s in ordered]}
    )
    locked = await connection.execute(_LOCK_POSITIONS, {**scope, "partitions": partitions})
    return {row.partition: row.next_offset for row in locked}


async def create_positions(
    connection: AsyncConnection, *, group_id: str, topic: str, partitions: Sequence[int], owner: str
) -> None:
    """Store position 0 for partitions that have none (the new partitions of a grown topic:
    `orders topics grow`); a position already stored is left as it is."""
    await connection.execute(
        _INIT_POSITIONS,
        {
            "group_id": group_id,
            "topic": topic,
            "owner": owner,
            "partitions": sorted(partitions),
            "starts": [0] * len(partitions),
        },
    )


async def advance_positions(
    connection: AsyncConnection,
    *,
    group_id: str,
    topic: str,
    owner: str,
    spans: Sequence[PartitionSpan],
) -> None:
    """Move each span's partition to the span's end (the caller holds the rows' locks)."""
    if not spans:
        return
    await connection.execute(
        _ADVANCE_POSITIONS,
        {
            "group_id": group_id,
            "topic": topic,
            "owner": owner,
            "partitions": [span.partition for span in spans],
            "ends": [span.end for span in spans],
        },
    )


async def set_position(
    connection: AsyncConnection,
    *,
    group_id: str,
    topic: str,
    partition: int,
    next_offset: int,
    owner: str,
) -> None:
    """Put a partition's position anywhere (an operator's reset; the group is stopped)."""
    await connection.execute(
        _SET_POSITION,
        {
            "group_id": group_id,
            "topic": topic,
            "partition": partition,
            "next_offset": next_offset,
            "owner": owner,
        },
    )


@dataclass(frozen=True)
class GroupPosition:
    topic: str
    partition: int
    next_offset: int


_GROUP_POSITIONS = text(
    """
    SELECT topic, partition, next_offset FROM consumer_positions
    WHERE group_id = :group_id ORDER BY topic, partition
    """
)

_DELETE_GROUP_POSITIONS = text("DELETE FROM consumer_positions WHERE group_id = :group_id")


async def group_positions(connection: AsyncConnection, group_id: str) -> list[GroupPosition]:
    """Every position the group has stored, on every topic."""
    result = await connection.execute(_GROUP_POSITIONS, {"group_id": group_id})
    return [GroupPosition(row.topic, row.partition, row.next_offset) for row in result]


async def delete_group_positions(connection: AsyncConnection, group_id: str) -> int:
    """Forget the group (an operator's delete; the group is stopped); how many rows went."""
    result = await connection.execute(_DELETE_GROUP_POSITIONS, {"group_id": group_id})
    return int(result.rowcount)

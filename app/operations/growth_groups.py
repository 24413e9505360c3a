"""Which consumer groups `orders topics grow` waits for, and where each of them stands.

Before partitions are added, every group that processes the orders topic per customer must have
processed up to the log end: otherwise a moved customer's earlier records (old partition) and
later ones (new partition) are processed at the same time by two members. A group keeps its
place in one of two stores:
- PostgreSQL (consumer_positions, the truth for the worker group and analytics' exact mode): the
  worker group is always waited for (it stores the orders); another group with positions there
  while Kafka says a member of it subscribes to the topic, or it stored one in the last RECENT_S;
- Kafka's committed offsets (payments, whose transactions carry its offsets; analytics' fast
  mode): while a member subscribes to the topic.
A group with neither is stopped: it is not waited for, and the plan says so. Once started again
it reads its backlog on the old partitions and the new partitions at the same time, so for it a
moved customer's records are no longer in order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.errors import GroupIdNotFound, for_code
from aiokafka.structs import TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.positions import read_positions
from app.operations.group_delete import with_coordinator
from app.operations.kafka_clients import bounded
from app.settings import Settings

# A group with positions in PostgreSQL that stored one this recently is taken to be running.
RECENT_S = 300.0

Store = Literal["postgresql", "kafka"]


@dataclass(frozen=True)
class GroupWait:
    """A group the growth waits for: until its positions reach the log ends."""

    group: str
    store: Store
    subscribed: int  # members subscribed to the topic now
    why: str


@dataclass(frozen=True)
class GroupSkip:
    group: str
    why: str


@dataclass(frozen=True)
class GroupMembers:
    state: str  # Kafka's name for it ("Stable", "Empty", "Dead" when unknown, ...)
    subscribed: int  # members subscribed to the topic
    assigned: frozenset[int]  # the topic's partitions assigned to its members


_GROUPS_WITH_POSITIONS = text(
    """
    SELECT group_id, extract(epoch FROM now() - max(updated_at))::float8 AS idle_s
    FROM consumer_positions WHERE topic = :topic GROUP BY group_id ORDER BY group_id
    """
)


def _decoded(kind: Any, raw: bytes) -> Any | None:
    """A member's metadata or assignment in the consumer protocol; None for another protocol."""
    with contextlib.suppress(Exception):
        return kind.decode(raw) if raw else None
    return None


def members_on(described: dict[str, Any], topic: str) -> GroupMembers:
    """What one DescribeGroups answer says of the members reading `topic`."""
    subscribed, assigned = 0, set()
    for member in described["members"]:
        metadata = _decoded(ConsumerProtocolMemberMetadata, member["member_metadata"])
        if metadata is not None and topic in metadata.subscription:
            subscribed += 1
        assignment = _decoded(ConsumerProtocolMemberAssignment, member["member_assignment"])
        for tp in assignment.partitions() if assignment is not None else ():
            if tp.topic == topic:
                assigned.add(tp.partition)
    return GroupMembers(described["state"], subscribed, frozenset(assigned))


async def describe_members(
    settings: Settings, admin: AIOKafkaAdminClient, group: str
) -> GroupMembers:
    """The group's members reading the orders topic, as its coordinator sees them now."""
    topic = settings.kafka.orders_topic

    async def ask(coordinator: int) -> GroupMembers:
        [response] = await admin.describe_consumer_groups([group], coordinator)
        [described] = response.to_object()["groups"]
        code = described["error_code"]
        if code and for_code(code) is GroupIdNotFound:
            return GroupMembers("Dead", 0, frozenset())
        if code:
            raise for_code(code)(group)
        return members_on(described, topic)

    return await bounded(
        settings.kafka, f"describing group {group}", with_coordinator(admin, group, ask)
    )


async def groups_to_wait_for(
    settings: Settings, engine: AsyncEngine, admin: AIOKafkaAdminClient
) -> tuple[list[GroupWait], list[GroupSkip]]:
    """The groups reading the orders topic that a growth must wait for, and the others."""
    topic, workers = settings.kafka.orders_topic, settings.worker.group_id
    async with engine.connect() as connection:
        rows = (await connection.execute(_GROUPS_WITH_POSITIONS, {"topic": topic})).all()
    idle = {row.group_id: float(row.idle_s) for row in rows}
    candidates = dict.fromkeys(
        [workers, *idle, settings.analytics.group_id, settings.payments.group_id]
    )
    waits, skips = [], []
    for group in candidates:
        members = await describe_members(settings, admin, group)
        on = f"{members.subscribed} member(s) subscribed to {topic}"
        if group == workers:
            waits.append(GroupWait(group, "postgresql", members.subscribed, f"the workers; {on}"))
        elif group in idle and (members.subscribed or idle[group] < RECENT_S):
            why = on if members.subscribed else f"stored a position {idle[group]:.0f}s ago"
            waits.append(GroupWait(group, "postgresql", members.subscribed, why))
        elif members.subscribed:
            waits.append(GroupWait(group, "kafka", members.subscribed, on))
        else:
            stored = f", its last position stored {idle[group]:.0f}s ago" if group in idle else ""
            skips.append(GroupSkip(group, f"no member subscribed to {topic}{stored}"))
    return waits, skips


async def group_positions(
    settings: Settings,
    engine: AsyncEngine,
    admin: AIOKafkaAdminClient,
    wait: GroupWait,
    partitions: Sequence[int],
) -> dict[int, int]:
    """Where the group stands on each partition (a partition it never stored is absent)."""
    topic = settings.kafka.orders_topic
    if wait.store == "postgresql":
        async with engine.connect() as connection:
            return await read_positions(connection, wait.group, topic, partitions)
    tps = [TopicPartition(topic, p) for p in partitions]

    async def ask(coordinator: int) -> dict[int, int]:
        offsets = await admin.list_consumer_group_offsets(wait.group, coordinator, tps)
        return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    return await bounded(
        settings.kafka,
        f"reading the offsets of group {wait.group}",
        with_coordinator(admin, wait.group, ask),
    )


def describe_waits(waits: Iterable[GroupWait]) -> str:
    return "; ".join(
        f"{w.group} ({'positions in PostgreSQL' if w.store == 'postgresql' else 'offsets in Kafka'}"
        f": {w.why})"
        for w in waits
    )

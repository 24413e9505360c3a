"""Reset the worker group's offsets: in PostgreSQL (the truth) and in Kafka (the mirror).

`kafka-consumer-groups --reset-offsets` alone would not move this group: the workers resume from
PostgreSQL. Like that tool, this one plans first, and applies only with `execute=True` and only
while the group has no active members (stop the workers, reset, start them again).
Moving back replays records: orders already stored are absorbed, nothing is doubled. Moving
forward skips records: those orders are never stored. That is the operator's explicit choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aiokafka.structs import OffsetAndMetadata, TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.positions import read_positions, set_position
from app.errors import OrdersError
from app.operations.kafka_clients import (
    active_members,
    admin_client,
    bounded,
    offsets_consumer,
    topic_partitions,
)
from app.settings import Settings

RESET_OWNER = "operator reset"


class ResetRefusedError(OrdersError):
    """The group is active: its members would overwrite the reset."""


@dataclass(frozen=True)
class Target:
    kind: Literal["earliest", "latest", "offset", "shift"]
    value: int = 0


@dataclass(frozen=True)
class Move:
    partition: int
    current: int | None
    new: int


async def plan_reset(
    settings: Settings,
    engine: AsyncEngine,
    target: Target,
    partitions: list[int] | None,
    group: str | None = None,
) -> list[Move]:
    """The moves that would reset `group` (default: the worker group) on the orders topic."""
    topic, group = settings.kafka.orders_topic, group or settings.worker.group_id
    kafka = settings.kafka
    async with offsets_consumer(kafka) as consumer:
        every = await topic_partitions(kafka, consumer, topic)
        chosen = [tp for tp in every if partitions is None or tp.partition in partitions]
        begin = await bounded(kafka, "reading log starts", consumer.beginning_offsets(chosen))
        end = await bounded(kafka, "reading log ends", consumer.end_offsets(chosen))
    async with engine.connect() as connection:
        stored = await read_positions(connection, group, topic, [tp.partition for tp in chosen])
    moves = []
    for tp in chosen:
        current = stored.get(tp.partition)
        wanted = {
            "earliest": begin[tp],
            "latest": end[tp],
            "offset": target.value,
            "shift": (current if current is not None else begin[tp]) + target.value,
        }[target.kind]
        moves.append(Move(tp.partition, current, min(max(wanted, begin[tp]), end[tp])))
    return moves


async def apply_reset(
    settings: Settings, engine: AsyncEngine, moves: list[Move], group: str | None = None
) -> None:
    topic, group = settings.kafka.orders_topic, group or settings.worker.group_id
    async with admin_client(settings.kafka) as admin:
        members = await bounded(
            settings.kafka, f"describing group {group}", active_members(admin, group)
        )
    if members:
        msg = f"group {group} has {members} active member(s); stop its members first"
        raise ResetRefusedError(msg)
    async with engine.begin() as connection:
        for move in moves:
            await set_position(
                connection,
                group_id=group,
                topic=topic,
                partition=move.partition,
                next_offset=move.new,
                owner=RESET_OWNER,
            )
    async with offsets_consumer(settings.kafka, group) as consumer:
        consumer.assign([TopicPartition(topic, m.partition) for m in moves])
        offsets = {TopicPartition(topic, m.partition): OffsetAndMetadata(m.new, "") for m in moves}
        await bounded(settings.kafka, f"committing group {group}", consumer.commit(offsets))

"""Delete a consumer group: its committed offsets in Kafka (the mirror) and its positions in
PostgreSQL (the truth). The course's `confluent local kafka consumer group delete my-group`.

`kafka-consumer-groups --delete` alone would leave the worker group's positions in PostgreSQL,
and the workers would resume from them as if nothing had happened. Like that tool, this one
refuses while the group has members; like `orders offsets reset`, it plans first and deletes
only with `execute`. Afterwards the group starts as a new one would: a worker finds no position
in PostgreSQL, no committed offset in Kafka, and reads from the log's beginning
(app/worker/consumer.py `_position`); the orders it already stored are absorbed, none doubled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupIdNotFound, KafkaError, NonEmptyGroup, for_code
from aiokafka.protocol.admin import DeleteGroupsRequest
from aiokafka.structs import TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.positions import GroupPosition, delete_group_positions, group_positions
from app.errors import OrdersError
from app.operations.kafka_clients import admin_client, bounded
from app.settings import Settings

T = TypeVar("T")

# A coordinator that is loading its groups (a broker just restarted), or has moved, answers
# with a retriable error: ask again, a few times, all inside the command's `bounded` wait.
COORDINATOR_ATTEMPTS = 5
COORDINATOR_BACKOFF_S = 0.5


class GroupDeleteRefusedError(OrdersError):
    """The group has active members: they would go on committing positions it no longer has."""


@dataclass(frozen=True)
class GroupPlan:
    """What deleting `group` would delete, and who would be in the way."""

    group: str
    stored: list[GroupPosition]  # PostgreSQL, every topic of the group
    committed: dict[TopicPartition, int]  # Kafka
    members: list[str]  # "client_id@host" of each active member
    kafka_state: str  # the group's state in Kafka; "Dead" when Kafka does not know it

    @property
    def known(self) -> bool:
        return bool(self.stored or self.committed or self.members or self.kafka_state != "Dead")


@dataclass(frozen=True)
class Deleted:
    positions: int  # rows deleted from consumer_positions
    in_kafka: bool  # False: Kafka did not know the group (GROUP_ID_NOT_FOUND)


class Verdict(Enum):
    DELETED = "deleted"
    NOT_FOUND = "not found"
    NOT_EMPTY = "not empty"
    RETRY = "retry"
    FAILED = "failed"


def judge_delete(error_code: int) -> Verdict:
    """What one group's DeleteGroups error code means for this command (pure: unit-tested)."""
    if error_code == 0:
        return Verdict.DELETED
    error = for_code(error_code)
    if error is GroupIdNotFound:
        return Verdict.NOT_FOUND
    if error is NonEmptyGroup:
        return Verdict.NOT_EMPTY
    # COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS carry the flag;
    # GROUP_AUTHORIZATION_FAILED and the rest do not: asking again would get the same answer.
    return Verdict.RETRY if error.retriable else Verdict.FAILED


async def with_coordinator(
    admin: AIOKafkaAdminClient, group: str, ask: Callable[[int], Awaitable[T]]
) -> T:
    """`ask` the group's coordinator; a retriable Kafka error (coordinator loading, moved, or
    away) finds the coordinator again and asks again, COORDINATOR_ATTEMPTS times at most."""
    for attempt in range(1, COORDINATOR_ATTEMPTS + 1):
        try:
            return await ask(await admin.find_coordinator(group))
        except KafkaError as exc:
            if not exc.retriable or attempt == COORDINATOR_ATTEMPTS:
                raise
        await asyncio.sleep(COORDINATOR_BACKOFF_S * attempt)
    msg = "unreachable: the last attempt returns or raises"
    raise AssertionError(msg)


async def _members_and_state(
    admin: AIOKafkaAdminClient, group: str, coordinator: int
) -> tuple[list[str], str]:
    [response] = await admin.describe_consumer_groups([group], group_coordinator_id=coordinator)
    [described] = response.to_object()["groups"]
    code = described["error_code"]
    if code and for_code(code) is GroupIdNotFound:  # newer DescribeGroups answer so for unknown
        return [], "Dead"
    if code:
        raise for_code(code)(group)
    members = [f"{m['client_id']}@{m['client_host'].lstrip('/')}" for m in described["members"]]
    return members, described["state"]


async def plan_delete(settings: Settings, engine: AsyncEngine, group: str) -> GroupPlan:
    """The group as both places hold it; changes nothing."""
    kafka = settings.kafka
    async with engine.connect() as connection:
        stored = await group_positions(connection, group)
    async with admin_client(kafka) as admin:

        async def read(coordinator: int) -> GroupPlan:
            offsets = await admin.list_consumer_group_offsets(group, coordinator)
            members, state = await _members_and_state(admin, group, coordinator)
            committed = {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
            return GroupPlan(group, stored, committed, members, state)

        return await bounded(kafka, f"reading group {group}", with_coordinator(admin, group, read))


async def delete_kafka_group(admin: AIOKafkaAdminClient, group: str) -> bool:
    """Delete the group in Kafka; False if Kafka did not know it.

    Written by hand: aiokafka 0.14 declares the DeleteGroups request (API key 42,
    aiokafka/protocol/admin.py) but its admin client has no method that sends it (Kafka's Java
    Admin has deleteConsumerGroups). So the request goes to the group's coordinator from here,
    over the admin client's own connections (its `_send_request`, as its methods do).
    """

    async def delete(coordinator: int) -> bool:
        response = await admin._send_request(DeleteGroupsRequest([group]), coordinator)
        [result] = response.to_object()["results"]
        verdict = judge_delete(result["error_code"])
        if verdict is Verdict.NOT_EMPTY:
            # A member joined since the check: Kafka refuses, atomically, on its side.
            msg = f"group {group} has active members (Kafka: NON_EMPTY_GROUP); stop them first"
            raise GroupDeleteRefusedError(msg)
        if verdict in (Verdict.RETRY, Verdict.FAILED):
            raise for_code(result["error_code"])(group)
        return verdict is Verdict.DELETED

    return await with_coordinator(admin, group, delete)


async def delete_group(settings: Settings, engine: AsyncEngine, group: str) -> Deleted:
    """Delete the group in Kafka and its positions in PostgreSQL; GroupDeleteRefusedError while
    it has active members."""
    kafka = settings.kafka
    async with admin_client(kafka) as admin:
        members, _ = await bounded(
            kafka,
            f"describing group {group}",
            with_coordinator(admin, group, lambda c: _members_and_state(admin, group, c)),
        )
        if members:
            msg = (
                f"group {group} has {len(members)} active member(s) ({', '.join(members)}); "
                "stop them first"
            )
            raise GroupDeleteRefusedError(msg)
        # The order: PostgreSQL's rows are deleted first but committed last, after Kafka has
        # deleted its group. If Kafka refuses (a member joined since the check) or fails, the
        # transaction rolls back: nothing deleted anywhere. If the commit fails after Kafka's
        # delete, the truth is intact and the workers resume from it as before (committing the
        # mirror again): run the command again. The other order could fail into a state no one
        # asked for: PostgreSQL's positions gone, Kafka's offsets kept, and the workers quietly
        # resuming from the mirror instead of starting afresh.
        async with engine.begin() as connection:
            deleted = await delete_group_positions(connection, group)
            in_kafka = await bounded(
                kafka, f"deleting group {group}", delete_kafka_group(admin, group)
            )
    return Deleted(positions=deleted, in_kafka=in_kafka)

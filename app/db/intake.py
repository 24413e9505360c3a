"""Every statement on `intake_state` and `intake_members` (migrations/versions/0008).

Whether the API takes orders for a topic lives in PostgreSQL: `orders migrate` registers the
topic's partition count, `orders topics grow` pauses and resumes intake (app/operations/
topic_growth.py), and each API process reads it and reports its own state (app/api/intake.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection

# open: taking orders; closing: refusing, with orders it let in still being answered;
# closed: refusing, every order it let in answered.
MemberState = Literal["open", "closing", "closed"]

# Heartbeats of processes gone for a day are deleted by whoever heartbeats.
FORGET_MEMBERS_AFTER_S = 24 * 3600.0


@dataclass(frozen=True)
class IntakeState:
    generation: int  # moves at every pause and resume
    paused: bool
    partitions: int  # the count the API processes must see before they produce
    reason: str | None = None


@dataclass(frozen=True)
class MemberReport:
    """What an API process says of itself at each heartbeat."""

    generation: int  # of the last state it read (0: none registered)
    state: MemberState
    closes_within_s: float  # after its last heartbeat, at the latest, it is closed and drained


@dataclass(frozen=True)
class SeenMember:
    member: str
    generation: int
    state: str
    closes_within_s: float
    age_s: float  # since its last heartbeat, on PostgreSQL's clock


# A process's heartbeat: its state at the generation it last read.
_BEAT = """
    INSERT INTO intake_members (member, topic, generation, state, closes_within_s, seen_at)
    VALUES (:member, :topic, :generation, :state, :closes_within_s, now())
    ON CONFLICT (member) DO UPDATE SET
        topic = EXCLUDED.topic, generation = EXCLUDED.generation, state = EXCLUDED.state,
        closes_within_s = EXCLUDED.closes_within_s, seen_at = EXCLUDED.seen_at
"""

# One statement: the state, read FOR SHARE, and the heartbeat, in one transaction. A pause (an
# UPDATE of the row) therefore waits for a read in progress, and a process that read "open"
# has its heartbeat committed before the pause commits: the grow, listing the members after its
# pause, always sees it. (A data-modifying CTE runs whether it is read or not.)
_READ_AND_REPORT = text(
    f"""
    WITH beat AS ({_BEAT})
    SELECT generation, paused, partitions, reason FROM intake_state
    WHERE topic = :topic FOR SHARE
    """
)

_REPORT = text(_BEAT)

_FORGET_OLD_MEMBERS = text(
    "DELETE FROM intake_members WHERE seen_at < now() - make_interval(secs => :older_than_s)"
)

_FORGET_MEMBER = text("DELETE FROM intake_members WHERE member = :member")

_READ_STATE = text(
    "SELECT generation, paused, partitions, reason FROM intake_state WHERE topic = :topic"
)

# `orders migrate`: the topic's count, for a topic never registered; a registered row is left
# as it is (register_topic returns it, and the caller compares).
_REGISTER = text(
    """
    INSERT INTO intake_state (topic, generation, paused, partitions)
    VALUES (:topic, 0, false, :partitions)
    ON CONFLICT (topic) DO NOTHING
    """
)

_READ_STATE_FOR_SHARE = text(
    "SELECT generation, paused, partitions, reason FROM intake_state WHERE topic = :topic FOR SHARE"
)

# Both local to the transaction: a wait for a row lock, and any statement, fails past them.
_BOUND_STATEMENTS = text(
    "SELECT set_config('lock_timeout', :ms, true), set_config('statement_timeout', :ms, true)"
)

_PAUSE = text(
    """
    INSERT INTO intake_state AS s (topic, generation, paused, reason, partitions)
    VALUES (:topic, 1, true, :reason, :partitions)
    ON CONFLICT (topic) DO UPDATE SET
        generation = s.generation + 1, paused = true, reason = EXCLUDED.reason, changed_at = now()
    RETURNING generation, paused, partitions, reason
    """
)

_RESUME = text(
    """
    UPDATE intake_state SET
        generation = generation + 1, paused = false, reason = NULL, partitions = :partitions,
        changed_at = now()
    WHERE topic = :topic
    RETURNING generation, paused, partitions, reason
    """
)

_SEEN_MEMBERS = text(
    """
    SELECT member, generation, state, closes_within_s,
           greatest(0, extract(epoch FROM now() - seen_at))::float8 AS age_s
    FROM intake_members WHERE topic = :topic ORDER BY member
    """
)


def _report_parameters(topic: str, member: str, report: MemberReport) -> dict[str, object]:
    return {
        "topic": topic,
        "member": member,
        "generation": report.generation,
        "state": report.state,
        "closes_within_s": report.closes_within_s,
    }


def _state(row: Row[Any] | None) -> IntakeState | None:
    if row is None:
        return None
    return IntakeState(int(row.generation), bool(row.paused), int(row.partitions), row.reason)


async def read_and_report(
    connection: AsyncConnection, topic: str, member: str, report: MemberReport
) -> IntakeState | None:
    """The topic's intake state (None: never registered), and this process's heartbeat; the
    caller's transaction holds the row's share lock until it ends."""
    result = await connection.execute(_READ_AND_REPORT, _report_parameters(topic, member, report))
    return _state(result.first())


async def report(connection: AsyncConnection, topic: str, member: str, said: MemberReport) -> None:
    """A heartbeat alone: a state change told at once rather than at the next read."""
    await connection.execute(_REPORT, _report_parameters(topic, member, said))


async def forget_old_members(
    connection: AsyncConnection, older_than_s: float = FORGET_MEMBERS_AFTER_S
) -> int:
    result = await connection.execute(_FORGET_OLD_MEMBERS, {"older_than_s": older_than_s})
    return int(result.rowcount)


async def forget_member(connection: AsyncConnection, member: str) -> None:
    """A process that stops with nothing in flight: no grow needs to wait for it."""
    await connection.execute(_FORGET_MEMBER, {"member": member})


async def read_state(
    connection: AsyncConnection, topic: str, *, for_share: bool = False
) -> IntakeState | None:
    """The topic's intake state (None: never registered). `for_share`: the caller's transaction
    holds the row's share lock until it ends, so a pause waits for it (a dlq replay's send)."""
    statement = _READ_STATE_FOR_SHARE if for_share else _READ_STATE
    return _state((await connection.execute(statement, {"topic": topic})).first())


async def register_topic(connection: AsyncConnection, topic: str, partitions: int) -> IntakeState:
    """Register the topic's partition count if it never was; the state registered now (a
    registered count is never replaced here: `orders topics grow` does it, after a drain)."""
    await connection.execute(_REGISTER, {"topic": topic, "partitions": partitions})
    state = await read_state(connection, topic)
    assert state is not None  # inserted just now, or there already (never deleted)
    return state


async def bound_statements(connection: AsyncConnection, seconds: float) -> None:
    """Every statement of the connection's transaction, and every wait for a lock in it, fails
    after `seconds` (PostgreSQL's lock_timeout and statement_timeout, local to it)."""
    await connection.execute(_BOUND_STATEMENTS, {"ms": f"{max(1, round(seconds * 1000))}ms"})


async def pause(
    connection: AsyncConnection, topic: str, partitions: int, reason: str
) -> IntakeState:
    """Pause intake under a new generation; `partitions` registers a topic never registered."""
    result = await connection.execute(
        _PAUSE, {"topic": topic, "partitions": partitions, "reason": reason}
    )
    state = _state(result.first())
    assert state is not None  # INSERT ... RETURNING always returns the row
    return state


async def resume(connection: AsyncConnection, topic: str, partitions: int) -> IntakeState:
    """Open intake under a new generation, producing with `partitions`."""
    state = _state(
        (await connection.execute(_RESUME, {"topic": topic, "partitions": partitions})).first()
    )
    if state is None:
        msg = f"no intake state for topic {topic!r} to resume"
        raise LookupError(msg)
    return state


async def seen_members(connection: AsyncConnection, topic: str) -> list[SeenMember]:
    """Every API process that reported for this topic (rows a day old are deleted)."""
    result = await connection.execute(_SEEN_MEMBERS, {"topic": topic})
    return [
        SeenMember(row.member, row.generation, row.state, row.closes_within_s, row.age_s)
        for row in result
    ]


# --- what `orders topics grow` reads and holds beside the state ---------------------------

# One growth of a topic at a time: a session lock, held by the grow's own connection (a grow
# that dies loses it with its session).
_TRY_LOCK = text("SELECT pg_try_advisory_lock(hashtext('orders topics grow ' || :topic))")
_UNLOCK = text("SELECT pg_advisory_unlock(hashtext('orders topics grow ' || :topic))")

# A loose index scan: each step jumps to the next customer id in the unique index on
# (customer_id, sequence), so the read costs `limit` index probes however many orders each
# customer has (a plain SELECT DISTINCT ... LIMIT scans every order of the customers it
# passes: PostgreSQL before 18 has no skip scan). The recursion stops once the limit is read.
_SAMPLE_CUSTOMERS = text(
    """
    WITH RECURSIVE ids AS (
        (SELECT customer_id FROM orders ORDER BY customer_id LIMIT 1)
        UNION ALL
        SELECT (
            SELECT o.customer_id FROM orders o
            WHERE o.customer_id > ids.customer_id ORDER BY o.customer_id LIMIT 1
        )
        FROM ids WHERE ids.customer_id IS NOT NULL
    )
    SELECT customer_id FROM ids WHERE customer_id IS NOT NULL LIMIT :limit
    """
)


async def try_lock_growth(connection: AsyncConnection, topic: str) -> bool:
    return bool(await connection.scalar(_TRY_LOCK, {"topic": topic}))


async def unlock_growth(connection: AsyncConnection, topic: str) -> None:
    await connection.execute(_UNLOCK, {"topic": topic})


async def sample_customers(connection: AsyncConnection, limit: int) -> list[str]:
    """Up to `limit` customer ids that have stored orders, in id order."""
    result = await connection.execute(_SAMPLE_CUSTOMERS, {"limit": limit})
    return [row.customer_id for row in result]

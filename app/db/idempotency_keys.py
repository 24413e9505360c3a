"""Every statement on `idempotency_keys`: the Idempotency-Keys the API remembers.

What the rows mean is decided in app.api.idempotency_rules, when each statement runs in
app.api.idempotency. Times are PostgreSQL's `clock_timestamp()`, not `now()`: one clock for every
API process, read after any row-lock wait (`now()` is the transaction's start).

Straight asyncpg, on a pool of its own, not the SQLAlchemy engine: a keyed POST /orders runs two
of these statements, and through the engine each checkout adds a pre-ping (BEGIN, ";", ROLLBACK:
three round trips) and each statement SQLAlchemy's greenlet bridge, 3-4x the CPU in all
(measured; README, "Idempotency-Key"). A dead connection is noticed without a ping: asyncpg sees
the server close it and the pool reconnects; a silent one fails its bounded wait (503).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal, TypeAlias

import asyncpg

from app.settings import DatabaseSettings

if TYPE_CHECKING:  # generic in asyncpg's stubs only
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = PoolConnectionProxy[asyncpg.Record]

State = Literal["in_flight", "completed", "failed"]


@dataclass(frozen=True, slots=True)
class RememberedKey:
    """One row: the first request's fingerprint and order id, and how its answer stands."""

    fingerprint: bytes
    order_id: uuid.UUID
    state: State
    partition: int | None
    offset: int | None
    lease_until: datetime
    expires_at: datetime


_INSERT_NEW = """
    INSERT INTO idempotency_keys
        (scope, key, fingerprint, order_id, state, lease_until, expires_at)
    VALUES ($1, $2, $3, $4, 'in_flight',
            clock_timestamp() + make_interval(secs => $5),
            clock_timestamp() + make_interval(secs => $6))
    ON CONFLICT (scope, key) DO NOTHING
    RETURNING lease_until
    """

_LOCK = """
    SELECT fingerprint, order_id, state, partition, "offset", lease_until, expires_at,
           clock_timestamp() AS now
    FROM idempotency_keys WHERE scope = $1 AND key = $2
    FOR UPDATE
    """

# Taken again: in flight once more, with a new lease. The order id and fingerprint ($4, $3) are
# the row's own on a retry, new ones when the key had expired (then it is a new key altogether).
_TAKE_AGAIN = """
    UPDATE idempotency_keys
    SET state = 'in_flight', fingerprint = $3, order_id = $4,
        partition = NULL, "offset" = NULL,
        lease_until = clock_timestamp() + make_interval(secs => $5),
        created_at = CASE WHEN $6 THEN clock_timestamp() ELSE created_at END,
        expires_at = CASE WHEN $6
                          THEN clock_timestamp() + make_interval(secs => $7)
                          ELSE expires_at END
    WHERE scope = $1 AND key = $2
    RETURNING lease_until
    """

# The first answer wins: an attempt that completes after another one did (possible only once a
# lease ran out under a live request) keeps and returns the answer already given.
# The key is kept for the retention from its answer on, not from its first attempt: a client
# confirming a 202 that came after a 503 must find it.
_COMPLETE = """
    UPDATE idempotency_keys
    SET state = 'completed',
        partition = CASE WHEN state = 'completed' THEN partition ELSE $4 END,
        "offset" = CASE WHEN state = 'completed' THEN "offset" ELSE $5 END,
        expires_at = greatest(expires_at, clock_timestamp() + make_interval(secs => $6))
    WHERE scope = $1 AND key = $2 AND order_id = $3
    RETURNING partition, "offset"
    """

# Only the attempt that holds the lease may give the key up; `lease_until` is its token.
_FAIL = """
    UPDATE idempotency_keys SET state = 'failed'
    WHERE scope = $1 AND key = $2 AND state = 'in_flight' AND lease_until = $3
    """

# Expired keys, but none a live request still holds. Rows a claim has locked are skipped, not
# waited for; API processes purging at once share the work.
_PURGE = """
    DELETE FROM idempotency_keys WHERE (scope, key) IN (
        SELECT scope, key FROM idempotency_keys
        WHERE expires_at <= clock_timestamp()
          AND NOT (state = 'in_flight' AND lease_until > clock_timestamp())
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    )
    """


async def _no_reset(connection: asyncpg.Connection[asyncpg.Record]) -> None:
    """These statements leave no session state behind; asyncpg's own reset (RESET ALL, ...)
    would cost a round trip per release. An open transaction is still rolled back."""


async def create_key_pool(settings: DatabaseSettings) -> asyncpg.Pool[asyncpg.Record]:
    """The API's pool for these statements; connects on first use, not here."""
    pool: asyncpg.Pool[asyncpg.Record] = await asyncpg.create_pool(
        str(settings.url).replace("postgresql+asyncpg://", "postgresql://", 1),
        min_size=0,
        max_size=settings.pool_size,
        timeout=settings.connect_timeout_s,
        # A server that stops answering must not hold a request: every statement is bounded.
        command_timeout=settings.connect_timeout_s,
        reset=_no_reset,
        server_settings={
            "idle_in_transaction_session_timeout": str(
                int(settings.idle_in_transaction_timeout_s * 1000)
            ),
        },
    )
    return pool


async def insert_new(
    connection: Connection,
    scope: str,
    key: str,
    fingerprint: bytes,
    order_id: uuid.UUID,
    lease_s: float,
    retention_s: float,
) -> datetime | None:
    """Remember a new key, in flight; its lease's end, or None when the key is already there."""
    lease_until: datetime | None = await connection.fetchval(
        _INSERT_NEW, scope, key, fingerprint, order_id, lease_s, retention_s
    )
    return lease_until


async def lock(
    connection: Connection, scope: str, key: str
) -> tuple[RememberedKey | None, datetime]:
    """The key's row, locked until the transaction ends, and the database's time after the lock."""
    row = await connection.fetchrow(_LOCK, scope, key)
    if row is None:
        now: datetime = await connection.fetchval("SELECT clock_timestamp()")
        return None, now
    remembered = RememberedKey(
        fingerprint=row["fingerprint"],
        order_id=row["order_id"],
        state=row["state"],
        partition=row["partition"],
        offset=row["offset"],
        lease_until=row["lease_until"],
        expires_at=row["expires_at"],
    )
    return remembered, row["now"]


async def take_again(
    connection: Connection,
    scope: str,
    key: str,
    fingerprint: bytes,
    order_id: uuid.UUID,
    lease_s: float,
    *,
    renew_s: float | None,
) -> datetime:
    """Put a locked key back in flight; `renew_s` restarts its retention (an expired key)."""
    lease_until: datetime = await connection.fetchval(
        _TAKE_AGAIN,
        scope,
        key,
        fingerprint,
        order_id,
        lease_s,
        renew_s is not None,
        renew_s or 0.0,
    )
    return lease_until


async def complete(
    connection: Connection,
    scope: str,
    key: str,
    order_id: uuid.UUID,
    partition: int,
    offset: int,
    retention_s: float,
) -> tuple[int, int] | None:
    """Remember the 202's answer; the answer remembered (the first one), or None if forgotten."""
    row = await connection.fetchrow(_COMPLETE, scope, key, order_id, partition, offset, retention_s)
    return None if row is None else (row["partition"], row["offset"])


async def fail(connection: Connection, scope: str, key: str, lease_until: datetime) -> None:
    await connection.execute(_FAIL, scope, key, lease_until)


async def purge_expired(connection: Connection, limit: int) -> int:
    """Delete up to `limit` expired keys; how many were deleted."""
    status = await connection.execute(_PURGE, limit)  # "DELETE <count>"
    return int(status.rsplit(" ", 1)[-1])

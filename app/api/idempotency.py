"""The Idempotency-Keys the API remembers, in PostgreSQL (shared by every API process).

A keyed request claims its key before it produces, and records the answer after: a 202's
(completed) or a 503's (failed). What a claim finds decides the answer (app.api.idempotency_rules):
the same answer again, a 409, a 422, or the right to produce, with the remembered order id on a
retry. Unkeyed requests never come here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg

from app.api.idempotency_rules import Decision, decide
from app.contract import new_order_id
from app.db import idempotency_keys
from app.errors import (
    DatabaseUnavailableError,
    IdempotencyKeyInFlightError,
    IdempotencyKeyReusedError,
)
from app.settings import DatabaseSettings, Settings

if TYPE_CHECKING:
    from app.db.idempotency_keys import Connection

log = logging.getLogger(__name__)

# As for the engine's connections (app.api.deps): any database failure is "not now" (503).
DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
PURGE_BATCH = 1000
PURGE_BATCHES_PER_ROUND = 10
PURGE_INTERVAL_MAX_S = 60.0


@dataclass(frozen=True, slots=True)
class Claim:
    """A keyed request's right to produce `order_id`, or (`answer` set) the answer to replay."""

    scope: str
    key: str
    order_id: uuid.UUID
    lease_until: datetime | None = None  # the claim's token: only its holder may fail the key
    answer: tuple[int, int] | None = None  # (partition, offset) of the first 202


class IdempotencyKeys:
    """The keys the API remembers, every wait bounded; PostgreSQL trouble is a 503, never a 500."""

    def __init__(
        self, database: DatabaseSettings, *, retention_s: float, lease_s: float, timeout_s: float
    ) -> None:
        self._database = database
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._retention_s = retention_s
        self._lease_s = lease_s
        self._lease_and_retention = (lease_s, retention_s)
        self._timeout_s = timeout_s
        self._purging: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()  # answers still being remembered

    @classmethod
    def from_settings(cls, settings: Settings) -> IdempotencyKeys:
        timeout_s = settings.database.connect_timeout_s  # bound on every database wait here
        return cls(
            settings.database,
            retention_s=settings.api.idempotency_retention_s,
            # The longest a live request holds its key: the acknowledgement wait (deadline and
            # grace), then the write that remembers the answer.
            # A request may first wait up to one deadline for the topic's metadata, then the
            # acknowledgement (deadline and grace), then the write that remembers the answer.
            lease_s=2 * settings.api.ack_deadline_s + settings.api.ack_grace_s + timeout_s,
            timeout_s=timeout_s,
        )

    async def start(self) -> None:
        """Make the pool (it connects on first use) and purge expired keys in the background."""
        if self._pool is None:
            self._pool = await idempotency_keys.create_key_pool(self._database)
            self._purging = asyncio.create_task(self._purge_forever(), name="idempotency-purge")

    async def stop(self) -> None:
        for task in list(self._pending):
            task.cancel()
        if self._purging is not None:
            self._purging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purging
            self._purging = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self._timeout_s)
            except TimeoutError:
                pool.terminate()

    async def claim(self, scope: str, key: str, fingerprint: bytes) -> Claim:
        """Take the key for this request, or raise what the request is answered instead."""
        order_id = new_order_id()
        try:
            async with self._connection() as connection:
                lease_until = await idempotency_keys.insert_new(
                    connection, scope, key, fingerprint, order_id, *self._lease_and_retention
                )
                if lease_until is not None:  # the common case: a key not seen before
                    return Claim(scope, key, order_id, lease_until)
                async with connection.transaction():
                    return await self._claim_remembered(
                        connection, scope, key, fingerprint, order_id
                    )
        except DatabaseUnavailableError as exc:
            msg = f"{exc}: the Idempotency-Key could not be checked, the order was not accepted"
            raise DatabaseUnavailableError(msg) from exc

    async def _claim_remembered(
        self,
        connection: Connection,
        scope: str,
        key: str,
        fingerprint: bytes,
        order_id: uuid.UUID,
    ) -> Claim:
        remembered, now = await idempotency_keys.lock(connection, scope, key)
        decision = decide(remembered, fingerprint, now)
        if decision is Decision.MISMATCH:
            msg = (
                f"Idempotency-Key {key!r} was already used with a different body; "
                "a key may be reused only for the same request"
            )
            raise IdempotencyKeyReusedError(msg)
        if decision is Decision.IN_FLIGHT:
            msg = f"a request with Idempotency-Key {key!r} is still being answered"
            raise IdempotencyKeyInFlightError(msg)
        if remembered is None:  # purged since the insert found it
            lease_until = await idempotency_keys.insert_new(
                connection, scope, key, fingerprint, order_id, *self._lease_and_retention
            )
            if lease_until is None:  # and taken by another request meanwhile
                msg = f"a request with Idempotency-Key {key!r} is still being answered"
                raise IdempotencyKeyInFlightError(msg)
            return Claim(scope, key, order_id, lease_until)
        if decision is Decision.REPLAY:
            assert remembered.partition is not None
            assert remembered.offset is not None
            return Claim(
                scope, key, remembered.order_id, answer=(remembered.partition, remembered.offset)
            )
        if decision is Decision.RETRY:
            order_id = remembered.order_id
        lease_until = await idempotency_keys.take_again(
            connection,
            scope,
            key,
            fingerprint,
            order_id,
            self._lease_s,
            renew_s=self._retention_s if decision is Decision.NEW else None,
        )
        return Claim(scope, key, order_id, lease_until)

    async def complete(self, claim: Claim, partition: int, offset: int) -> tuple[int, int]:
        """Remember a 202's answer; the answer to give (the first one, if another attempt won).

        The order is accepted whatever happens here: if PostgreSQL does not answer, the 202
        still goes out, and a retry after the lease produces again with the same order id.
        """
        try:
            remembered = await self._complete(claim, partition, offset)
        except Exception as exc:  # the order is accepted: nothing here may turn it into a 5xx
            log.warning(
                "order %s accepted, its Idempotency-Key not updated yet (%r); retrying in the "
                "background while its lease lasts",
                claim.order_id,
                exc,
            )
            self._remember_later(claim, partition, offset)
            return partition, offset
        return remembered or (partition, offset)

    async def _complete(self, claim: Claim, partition: int, offset: int) -> tuple[int, int] | None:
        async with self._connection() as connection:
            return await idempotency_keys.complete(
                connection,
                claim.scope,
                claim.key,
                claim.order_id,
                partition,
                offset,
                self._retention_s,
            )

    def _remember_later(self, claim: Claim, partition: int, offset: int) -> None:
        """Keep trying to remember a 202 until the claim's lease ends: until then no other
        request can take the key, so a blip shorter than the lease changes no answer."""

        async def retry() -> None:
            loop = asyncio.get_running_loop()
            deadline, delay = loop.time() + self._lease_s, 0.1
            while loop.time() < deadline:
                await asyncio.sleep(delay)
                try:
                    await self._complete(claim, partition, offset)
                except Exception as exc:  # logged; tried again until the lease ends
                    log.debug("Idempotency-Key of order %s: %r", claim.order_id, exc)
                    delay = min(delay * 2, 2.0)
                else:
                    return
            log.error(
                "order %s accepted, but its Idempotency-Key could not be updated within its "
                "lease: a retry may produce it again (stored once; its answer may differ)",
                claim.order_id,
            )

        task = asyncio.create_task(retry(), name=f"idempotency-complete-{claim.order_id}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def fail(self, claim: Claim) -> None:
        """Give the key up after a 503, so a retry produces again at once (not after the lease)."""
        assert claim.lease_until is not None
        try:
            async with self._connection() as connection:
                await idempotency_keys.fail(connection, claim.scope, claim.key, claim.lease_until)
        except Exception as exc:  # best effort: the lease ends the claim anyway
            log.warning(
                "Idempotency-Key of order %s stays in flight until its lease ends: %s",
                claim.order_id,
                exc,
            )

    async def purge_expired(self) -> int:
        """Delete expired keys, in bounded batches and a bounded number of them; how many."""
        purged = 0
        for _ in range(PURGE_BATCHES_PER_ROUND):
            async with self._connection() as connection:
                deleted = await idempotency_keys.purge_expired(connection, PURGE_BATCH)
            purged += deleted
            if deleted < PURGE_BATCH:
                break
        return purged

    async def _purge_forever(self) -> None:
        interval = min(self._retention_s, PURGE_INTERVAL_MAX_S)
        while True:
            await asyncio.sleep(interval)
            try:
                purged = await self.purge_expired()
            except DatabaseUnavailableError as exc:
                log.warning(
                    "expired Idempotency-Keys not purged (%s); next try in %.0fs", exc, interval
                )
            except Exception:
                log.exception("expired Idempotency-Keys not purged; next try in %.0fs", interval)
            else:
                if purged:
                    log.info("purged %d expired Idempotency-Keys", purged)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection, every wait in the block bounded; failures become 503s."""
        if self._pool is None:
            msg = "IdempotencyKeys used before start() or after stop()"
            raise DatabaseUnavailableError(msg)
        try:
            # The acquire's own timeout also bounds its release, which waits for the server to
            # acknowledge a cancelled statement (without it, as long as the server is stalled).
            async with (
                asyncio.timeout(self._timeout_s),
                self._pool.acquire(timeout=self._timeout_s) as connection,
            ):
                yield connection
        except DATABASE_ERRORS as exc:
            msg = f"PostgreSQL did not answer ({type(exc).__name__})"
            raise DatabaseUnavailableError(msg) from exc

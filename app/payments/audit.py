"""The audit trail: every charge attempt, appended to `payment_attempts` (migration 0007).

An attempt is two rows, never one row updated (the application's role may not UPDATE it):
`started`, committed BEFORE the gateway is called, then its outcome. So whatever the gateway
saw is accounted for, even a call whose member was killed before the answer: its `started` row
stands alone. Rows are batched: each caller waits for the one INSERT that carries its row (many
charges are in flight, one statement per row would cost a round trip each). A transient database
failure is retried (app.worker.failures decides) until the row is in: no call goes out unaccounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.payments.charges import ChargeRequest
from app.worker.failures import Verdict, classify

log = logging.getLogger(__name__)

Outcome = Literal["started", "charged", "replayed", "failed", "refused"]

_INSERT = text(
    "INSERT INTO payment_attempts (order_id, customer_id, charge_key, attempt, request_id,"
    " member, outcome, http_status, detail, started_at, finished_at)"
    " VALUES (:order_id, :customer_id, :charge_key, :attempt, :request_id, :member, :outcome,"
    " :http_status, :detail, :started_at, :finished_at)"
)


@dataclass(frozen=True)
class AttemptRow:
    order_id: uuid.UUID
    customer_id: str
    charge_key: str
    attempt: int
    request_id: str
    member: str
    outcome: Outcome
    http_status: int | None
    detail: str | None
    started_at: datetime
    finished_at: datetime | None

    @classmethod
    def started(cls, request: ChargeRequest, attempt: int, member: str) -> AttemptRow:
        return cls(
            request.order_id,
            request.customer_id,
            request.charge_key,
            attempt,
            request.request_id,
            member,
            "started",
            None,
            None,
            datetime.now(UTC),
            None,
        )

    def finished(self, outcome: Outcome, status: int | None, detail: str | None) -> AttemptRow:
        return AttemptRow(
            self.order_id,
            self.customer_id,
            self.charge_key,
            self.attempt,
            self.request_id,
            self.member,
            outcome,
            status,
            detail[:500] if detail else None,
            self.started_at,
            datetime.now(UTC),
        )


class AuditTrail:
    """`await trail.append(row)` returns once the row is committed (with the others waiting)."""

    def __init__(
        self, engine: AsyncEngine, *, backoff_initial_s: float, backoff_max_s: float
    ) -> None:
        self._engine = engine
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._waiting: list[tuple[AttemptRow, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.rows_written = 0
        self.statements = 0

    async def append(self, row: AttemptRow) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush_forever())
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((row, done))
        self._wake.set()
        await done

    async def _flush_forever(self) -> None:
        delay = self._backoff[0]
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._waiting = self._waiting, []
            # Callers cancelled meanwhile (a revoked partition) no longer wait; their rows are
            # written anyway: a started attempt may already be on its way to the gateway.
            if not batch:
                continue
            try:
                async with self._engine.begin() as connection:
                    await connection.execute(_INSERT, [vars(row) for row, _ in batch])
            except Exception as exc:
                if classify(exc) is not Verdict.TRANSIENT:
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                log.warning("audit rows not written (%r); retrying in %.1fs", exc, delay)
                self._waiting = batch + self._waiting
                self._wake.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff[1])
                continue
            delay = self._backoff[0]
            self.rows_written += len(batch)
            self.statements += 1
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

"""The oracle: compare what clients were told (202s) with what PostgreSQL holds.

After faults heal and lag drains: every accepted order is stored exactly once, nothing refused
or unknown is stored, and each sequential client's orders carry sequence numbers 1, 2, 3, ... in
the order the client's requests were accepted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.tables import consumer_positions, orders


@dataclass
class Expectations:
    """What the clients saw: per customer, the order ids that got a 202, in order; and the
    requests answered 503 and not retried, as (customer, Idempotency-Key or None)."""

    accepted: dict[str, list[uuid.UUID]] = field(default_factory=lambda: defaultdict(list))
    refused: list[tuple[str, str | None]] = field(default_factory=list)

    def accept(self, customer_id: str, order_id: uuid.UUID) -> None:
        if order_id not in self.accepted[customer_id]:
            self.accepted[customer_id].append(order_id)

    @property
    def total(self) -> int:
        return sum(len(ids) for ids in self.accepted.values())


@dataclass
class LedgerReport:
    stored: int
    lost: list[uuid.UUID]
    duplicated: list[uuid.UUID]
    out_of_order: list[str]
    unexpected: list[uuid.UUID]

    @property
    def holds(self) -> bool:
        return not (self.lost or self.duplicated or self.out_of_order or self.unexpected)

    def __str__(self) -> str:
        return (
            f"stored={self.stored} lost={len(self.lost)} duplicated={len(self.duplicated)} "
            f"out_of_order={len(self.out_of_order)} unexpected={len(self.unexpected)}"
            + (f" (first out of order: {self.out_of_order[:3]})" if self.out_of_order else "")
        )


async def stored_count(engine: AsyncEngine, customers: list[str]) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            select(func.count()).select_from(orders).where(orders.c.customer_id.in_(customers))
        )
    return int(count or 0)


async def wait_until_stored(
    engine: AsyncEngine, expected: Expectations, timeout: float = 120.0
) -> int:
    """Wait for the workers to store every accepted order; return how many are stored."""
    customers = list(expected.accepted)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    count = await stored_count(engine, customers)
    while count < expected.total and loop.time() < deadline:
        await asyncio.sleep(0.25)
        count = await stored_count(engine, customers)
    return count


async def check_ledger(engine: AsyncEngine, expected: Expectations) -> LedgerReport:
    customers = list(expected.accepted)
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                select(orders.c.order_id, orders.c.customer_id, orders.c.sequence)
                .where(orders.c.customer_id.in_(customers))
                .order_by(orders.c.customer_id, orders.c.sequence)
            )
        ).all()
    by_customer: dict[str, list[uuid.UUID]] = defaultdict(list)
    seen: dict[uuid.UUID, int] = defaultdict(int)
    sequences: dict[str, list[int]] = defaultdict(list)
    for order_id, customer_id, sequence in rows:
        by_customer[customer_id].append(order_id)
        sequences[customer_id].append(sequence)
        seen[order_id] += 1
    accepted = {oid for ids in expected.accepted.values() for oid in ids}
    out_of_order = [
        customer
        for customer, ids in expected.accepted.items()
        if [oid for oid in by_customer[customer] if oid in accepted] != ids
        or sequences[customer] != list(range(1, len(sequences[customer]) + 1))
    ]
    return LedgerReport(
        stored=len(rows),
        lost=sorted(accepted - set(seen)),
        duplicated=sorted(oid for oid, n in seen.items() if n > 1),
        out_of_order=out_of_order,
        unexpected=sorted(set(seen) - accepted),
    )


async def stored_positions(engine: AsyncEngine, group_id: str, topic: str) -> dict[int, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(consumer_positions.c.partition, consumer_positions.c.next_offset).where(
                consumer_positions.c.group_id == group_id, consumer_positions.c.topic == topic
            )
        )
    return {partition: offset for partition, offset in rows}

"""The position rows, claimed by members whose batches share partitions."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.positions import PartitionSpan, claim_partitions


async def test_members_claiming_the_same_new_partitions_in_opposite_orders_never_deadlock(
    engine: AsyncEngine, run_id: str
) -> None:
    """Two members' first batches name the same partitions in opposite orders. Rows are created
    and locked in partition order whatever the batch's order, so one waits for the other;
    in batch order each would hold a row the other wants (PostgreSQL: deadlock detected)."""
    partitions = list(range(400))

    async def claim(group: str, order: list[int], hold_s: float) -> dict[int, int]:
        spans = [PartitionSpan(p, 0, 1) for p in order]
        async with engine.begin() as connection:
            claimed = await claim_partitions(
                connection, group_id=group, topic="t", owner=str(order[0]), spans=spans
            )
            await asyncio.sleep(hold_s)  # hold the locks while the other member arrives
        return claimed

    orders = [partitions, partitions[::-1], partitions[200:] + partitions[:200]]
    for round_ in range(15):
        group = f"{run_id}-{round_}"
        claims = await asyncio.gather(*(claim(group, order, 0.01) for order in orders))
        assert all(claimed == dict.fromkeys(partitions, 0) for claimed in claims)

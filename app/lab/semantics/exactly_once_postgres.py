"""Exactly once, this project's way: the effect and the position in one PostgreSQL transaction.

The course: "**Exactly once**: Messages are delivered exactly once (requires idempotent
producer + transactions)"; its financial scenario: "Enable idempotent producer", "Manual
offset management with database transactions".

The producer is idempotent (a retried request is not appended twice). The consumer keeps its
offsets in PostgreSQL, as app/worker/ does (app/db/positions.py): one transaction per
partition's batch stores the events (an event stored already is absorbed) AND moves the
partition's position, fenced: only from where the batch began. A kill -9 before COMMIT leaves
neither; after it, both, and the next member starts from the stored position. A member frozen
mid-batch while a newer one redid that batch finds the position moved: its batch is refused,
rolled back, and it leaves. The Kafka commit after COMMIT is only a mirror for the tools.
"""

from __future__ import annotations

from app.lab.semantics import store
from app.lab.semantics.member_runtime import POLL_MS, Fenced, Member

SOURCE_PRODUCER: dict[str, object] = {"acks": "all", "enable_idempotence": True}


async def run(member: Member) -> None:
    run_id, mode = member.args.run_id, member.args.mode
    async with member.engine.begin() as db:  # positions come from PostgreSQL, not Kafka
        stored = await store.positions(db, run_id, mode, range(member.args.partitions))
    consumer = await member.input_consumer(positions=stored)
    member.say("ready")
    batch_no = 0
    while not member.stopping:
        batch = await consumer.getmany(timeout_ms=POLL_MS, max_records=member.args.max_records)
        if not batch:
            continue
        for tp, records in batch.items():
            batch_no += 1
            start, end = stored[tp.partition], records[-1].offset + 1
            async with member.engine.begin() as db:
                for done, record in enumerate(records, 1):
                    await store.insert_if_new(db, member.delivery(record, batch_no))
                    await member.processed(
                        done, len(records), batch=batch_no, partition=tp.partition, start=start
                    )
                if not await store.move_position(db, run_id, mode, tp.partition, start, end):
                    # Raised inside the transaction: it rolls back, none of the batch is kept.
                    msg = f"partition {tp.partition} moved on from {start}: batch refused"
                    raise Fenced(msg)
            stored[tp.partition] = end
            member.say("committed", batch=batch_no, partition=tp.partition, end=end)
        await member.mirror_commit(consumer, {tp: stored[tp.partition] for tp in batch})

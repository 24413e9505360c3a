"""At most once. The course: "**At most once**: Messages may be lost but never duplicated".

The producer fires and forgets (`acks=0`: the broker answers nothing, so nothing is retried),
the course's "Some message loss acceptable" scenario. The consumer commits a batch's offsets
BEFORE it processes the batch, then stores its records one by one. A kill -9 between the
commit and the batch's last record loses the rest of the batch: the next member starts after
it. A record is never processed twice: its offset was committed before it was touched.

Why acks=0 and not acks=1: the lab's broker is a single node, one in-sync replica, so the
leader's acknowledgement is the all-replicas acknowledgement and acks=1 would lose nothing.
acks=1 loses a record only when its leader fails over before a follower copied it, which needs
two brokers or more; acks=0 loses on one broker too (what it never took, unanswered).
"""

from __future__ import annotations

from app.lab.semantics import store
from app.lab.semantics.member_runtime import POLL_MS, Member

SOURCE_PRODUCER: dict[str, object] = {"acks": 0, "enable_idempotence": False}


async def run(member: Member) -> None:
    consumer = await member.input_consumer()
    async with member.engine.connect() as connection:
        db = await connection.execution_options(isolation_level="AUTOCOMMIT")
        member.say("ready")
        batch_no = 0
        while not member.stopping:
            batch = await consumer.getmany(timeout_ms=POLL_MS, max_records=member.args.max_records)
            if not batch:
                continue
            batch_no += 1
            # Commit first: from here on, whatever of the batch is not stored yet is lost
            # if this process dies.
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
            records = [record for records in batch.values() for record in records]
            for done, record in enumerate(records, 1):
                await store.insert(db, member.delivery(record, batch_no))
                await member.processed(done, len(records), batch=batch_no)
            member.say("committed", batch=batch_no)

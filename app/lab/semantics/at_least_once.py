"""At least once. The course: "**At least once**: Messages are never lost but may be duplicated".

The course's order-processing scenario: "`acks=all` and `retries=3`", "manual offset commits".
The producer waits for every in-sync replica and retries, NOT idempotent: a retried request
whose first answer was lost is appended twice. The consumer stores each record (a plain insert,
committed at once, no unique constraint), and only then commits the batch's offsets. A kill -9
between the two redelivers what was stored: stored twice.
"""

from __future__ import annotations

from app.lab.semantics import store
from app.lab.semantics.member_runtime import POLL_MS, Member

SOURCE_PRODUCER: dict[str, object] = {"acks": "all", "enable_idempotence": False}


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
            records = [record for records in batch.values() for record in records]
            for done, record in enumerate(records, 1):
                await store.insert(db, member.delivery(record, batch_no))
                await member.processed(done, len(records), batch=batch_no)
            # Commit last: a crash before this line redelivers the batch, stored or not.
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
            member.say("committed", batch=batch_no)

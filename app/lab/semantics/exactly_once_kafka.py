"""Exactly once, the Kafka way: a read-process-write stage with a transactional producer.

The course: "**Exactly once**: Messages are delivered exactly once (requires idempotent
producer + transactions)"; "Enable idempotent producer", "Use transactions for exactly-once
semantics".

The source producer is idempotent. The stage reads a batch, writes one output record per event
and the batch's input offsets (`send_offsets_to_transaction`) in ONE Kafka transaction, and
commits it. Downstream, a `read_committed` reader sees a transaction's records only once it
committed. A kill -9 mid-transaction leaves it open; the next member, starting its producer
with the same `transactional_id`, aborts it and starts from the last committed offsets. A
member frozen mid-transaction while a newer one started is a zombie: the broker refuses its
next write with the old producer epoch (ProducerFenced), and its open transaction was aborted.
"""

from __future__ import annotations

from aiokafka.errors import ProducerFenced

from app.lab.semantics.member_runtime import POLL_MS, Fenced, Member

SOURCE_PRODUCER: dict[str, object] = {"acks": "all", "enable_idempotence": True}


async def run(member: Member) -> None:
    # The producer first: starting it completes whatever transaction a predecessor left, so the
    # offsets read next are the committed ones.
    producer = await member.transactional_producer()
    consumer = await member.input_consumer(isolation_level="read_committed")
    member.say("ready")
    batch_no = 0
    try:
        while not member.stopping:
            batch = await consumer.getmany(timeout_ms=POLL_MS, max_records=member.args.max_records)
            if not batch:
                continue
            batch_no += 1
            records = [record for records in batch.values() for record in records]
            headers = [("writer", member.writer(batch_no).encode())]
            async with producer.transaction():
                for done, record in enumerate(records, 1):
                    # Awaited one by one, as the other modes insert one by one.
                    await producer.send_and_wait(
                        member.args.out_topic, record.value, key=record.key, headers=headers
                    )
                    await member.processed(done, len(records), batch=batch_no)
                offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
                await producer.send_offsets_to_transaction(offsets, member.args.group)
            member.say("committed", batch=batch_no)
    except ProducerFenced as exc:
        msg = f"producer fenced by a newer member: {exc!r}"
        raise Fenced(msg) from exc

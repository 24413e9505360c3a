"""Read the dead-letter topic, and send a record back to `orders` once its cause is fixed.

A replayed record is produced again with its original key and headers (the `dlq.*` provenance
dropped but for its first append time, `dlq.replayed.from` added), so it lands on its customer's
partition and is processed like any other record: stored if it now parses (and was appended in
time on its first journey), dead-lettered again if not.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka.structs import ConsumerRecord, TopicPartition

from app import dlq_headers as dlq
from app.operations.kafka_clients import offsets_consumer
from app.publisher import build_producer, close_producer
from app.settings import KafkaSettings

REPLAYED_FROM = dlq.H_REPLAYED_FROM
KEPT_ON_REPLAY = {dlq.H_TIMESTAMP, dlq.H_TIMESTAMP_TYPE}


@dataclass(frozen=True)
class DeadLetter:
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    @property
    def origin(self) -> str:
        h = self.headers
        return f"{h.get(dlq.H_TOPIC)}/{h.get(dlq.H_PARTITION)}@{h.get(dlq.H_OFFSET)}"


def _letter(record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
    headers = {key: raw.decode(errors="replace") for key, raw in record.headers or ()}
    return DeadLetter(record.offset, record.key, record.value, headers)


async def list_dead_letters(
    settings: KafkaSettings, start: int = 0, limit: int = 50
) -> list[DeadLetter]:
    tp = TopicPartition(settings.dlq_topic, 0)
    async with offsets_consumer(settings) as consumer:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, start)
        letters: list[DeadLetter] = []
        async with asyncio.timeout(30):
            while len(letters) < limit and start + len(letters) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=limit)
                letters += [_letter(record) for record in batch.get(tp, [])]
    return letters[:limit]


async def replay_dead_letter(settings: KafkaSettings, offset: int) -> tuple[int, int]:
    """Produce the dead letter at `offset` to the orders topic again; its new partition/offset."""
    letters = await list_dead_letters(settings, offset, 1)
    if not letters or letters[0].offset != offset:
        msg = f"no dead letter at offset {offset} of {settings.dlq_topic}"
        raise LookupError(msg)
    letter = letters[0]
    if letter.key is None:
        msg = f"dead letter {offset} has no key: replayed, it would land on a random partition"
        raise LookupError(msg)
    headers = [
        (k, v.encode())
        for k, v in letter.headers.items()
        if not k.startswith("dlq.") or k in KEPT_ON_REPLAY
    ]
    headers.append((REPLAYED_FROM, str(offset).encode()))
    producer = build_producer(settings)
    await producer.start()
    try:
        sent = await asyncio.wait_for(
            producer.send_and_wait(
                settings.orders_topic, letter.value, key=letter.key, headers=headers
            ),
            settings.request_timeout_ms / 1000,
        )
    finally:
        await close_producer(producer, 5.0)
    return sent.partition, sent.offset

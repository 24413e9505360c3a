"""What the workers set aside, and sending it back to `orders` once its cause is fixed.

Two places hold it: the dead-letter topic, and PostgreSQL's `quarantined_records` for a record
the topic could not take (too large, or unreachable for too long). Either is replayed the same
way: produced again to the orders topic with its original key (so its customer's partition) and
its own headers, plus its first append time and `dlq.replayed.from` (app.operations.provenance),
then processed like any other record: stored if it now parses (and was appended in time on its
first journey), set aside again if not.

A replay goes through the intake gate like an order (app/api/intake.py): refused while intake is
paused (`orders topics grow`) or registers another partition count than the topic's, and sent
to partition murmur2(key) over the registered count, the API's choice. The intake row is read
FOR SHARE in a transaction around the send, so a pause waits until the record is appended.

Every Kafka wait here is bounded (app.operations.kafka_clients): with the broker away, or the
dead-letter topic truncated by retention, a command says so instead of waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, TopicPartition
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import dlq_headers as dlq
from app.batching import partition_for
from app.db import intake
from app.db.quarantine import (
    QuarantinedRecord,
    StoredQuarantine,
    find_quarantined,
    mark_replayed,
)
from app.errors import OrdersError
from app.operations import provenance
from app.operations.kafka_clients import (
    KafkaCommandError,
    bounded,
    offsets_consumer,
    topic_partitions,
)
from app.publisher import build_producer, close_producer
from app.settings import KafkaSettings

REPLAYED_FROM = dlq.H_REPLAYED_FROM
# `dlq.replayed.from` of a quarantined record's replay (a dead letter's is its DLQ offset).
QUARANTINE_SOURCE = "quarantined_records:"
FETCH_WAIT_MS = 500
# A replay's PostgreSQL statements and lock waits (a row locked by a grow's pause, a replay of
# the same quarantined record) fail past this.
DB_TIMEOUT_S = 10.0


class ReplayRefusedError(OrdersError):
    """The record to replay does not exist (any more), or cannot be replayed as it is."""


@dataclass(frozen=True)
class DeadLetter:
    offset: int
    key: bytes | None
    value: bytes | None
    raw_headers: tuple[provenance.Header, ...]

    @property
    def headers(self) -> dict[str, str]:
        """Decoded for display; a name that repeats shows its last value (the latest failure)."""
        return {k: (v or b"").decode(errors="replace") for k, v in self.raw_headers}

    @property
    def origin(self) -> str:
        h = self.headers
        return f"{h.get(dlq.H_TOPIC)}/{h.get(dlq.H_PARTITION)}@{h.get(dlq.H_OFFSET)}"


@dataclass(frozen=True)
class DeadLetterPage:
    """Letters read from `start` (the asked offset, moved up to the log start if it was below),
    and the topic's log start and end when they were read."""

    letters: list[DeadLetter]
    asked: int
    start: int
    log_start: int
    log_end: int

    @property
    def moved_to_log_start(self) -> bool:
        return self.start > self.asked


def _letter(record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
    return DeadLetter(record.offset, record.key, record.value, tuple(record.headers or ()))


async def list_dead_letters(
    settings: KafkaSettings, start: int = 0, limit: int = 50
) -> DeadLetterPage:
    """Up to `limit` dead letters from offset `start`. Offsets below the log start (deleted by
    retention or delete_records) are skipped to it; from the log end on, there is nothing."""
    async with offsets_consumer(settings, auto_offset_reset="earliest") as consumer:
        [tp] = await topic_partitions(settings, consumer, settings.dlq_topic)
        consumer.assign([tp])
        begin = (
            await bounded(settings, "reading the DLQ's start", consumer.beginning_offsets([tp]))
        )[tp]
        end = (await bounded(settings, "reading the DLQ's end", consumer.end_offsets([tp])))[tp]
        first = max(start, begin)
        letters = await _read(settings, consumer, tp, first, end, limit) if first < end else []
    return DeadLetterPage(letters, start, first, begin, end)


async def _read(
    settings: KafkaSettings,
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    start: int,
    end: int,
    limit: int,
) -> list[DeadLetter]:
    """Records from `start` until `limit` of them or the position reaches `end`.

    Each fetch is bounded, and so is a run of empty ones: a broker that went away mid-read is
    reported, not waited for. (If retention deletes `start` meanwhile, the consumer resets to the
    new log start: auto_offset_reset="earliest".)
    """
    consumer.seek(tp, start)
    loop = asyncio.get_running_loop()
    stall_bound = settings.request_timeout_ms / 1000
    last_progress = loop.time()
    letters: list[DeadLetter] = []
    position = start
    while len(letters) < limit and position < end:
        fetch = consumer.getmany(tp, timeout_ms=FETCH_WAIT_MS, max_records=limit - len(letters))
        records = (await bounded(settings, "fetching from the DLQ", fetch)).get(tp, [])
        letters += [_letter(record) for record in records if record.offset < end]
        # The position moves past offsets that hold no record too (transaction markers).
        moved = await bounded(settings, "reading the DLQ position", consumer.position(tp))
        if moved > position:
            position, last_progress = moved, loop.time()
        elif loop.time() - last_progress > stall_bound:
            msg = (
                f"no records fetched from {tp.topic} at offset {position} (log end {end}) "
                f"within {stall_bound:g}s: is Kafka at {settings.bootstrap_servers} reachable?"
            )
            raise KafkaCommandError(msg)
    return letters[:limit]


async def replay_dead_letter(
    settings: KafkaSettings, engine: AsyncEngine, offset: int
) -> tuple[int, int]:
    """Produce the dead letter at `offset` to the orders topic again; its new partition/offset."""
    letter = await find_dead_letter(settings, offset)
    appended = provenance.dead_letter_first_append(letter.raw_headers)
    if appended is None:
        msg = f"dead letter {offset} has no {dlq.H_TIMESTAMP} header: its first append is unknown"
        raise ReplayRefusedError(msg)
    original, _ = provenance.split_dead_letter(letter.raw_headers)
    headers = provenance.replay_headers(original, appended, str(offset))
    producer = await _started_producer(settings)
    try:
        async with engine.begin() as connection:
            await intake.bound_statements(connection, DB_TIMEOUT_S)
            return await _send(settings, connection, producer, letter.key, letter.value, headers)
    finally:
        await close_producer(producer, settings.request_timeout_ms / 1000)


async def find_dead_letter(settings: KafkaSettings, offset: int) -> DeadLetter:
    """The dead letter at `offset`, or ReplayRefusedError saying why there is none."""
    page = await list_dead_letters(settings, offset, 1)
    topic = settings.dlq_topic
    if offset < page.log_start:
        msg = (
            f"dead letter {offset} no longer exists: {topic} now starts at offset "
            f"{page.log_start} (older letters were deleted by retention or delete_records)"
        )
        raise ReplayRefusedError(msg)
    if offset >= page.log_end:
        msg = f"no dead letter at offset {offset}: {topic} ends at offset {page.log_end}"
        raise ReplayRefusedError(msg)
    if not page.letters or page.letters[0].offset != offset:
        msg = f"no dead letter at offset {offset} of {topic}"
        raise ReplayRefusedError(msg)
    letter = page.letters[0]
    if letter.key is None:
        msg = f"dead letter {offset} has no key: replayed, it would land on a random partition"
        raise ReplayRefusedError(msg)
    return letter


def replayable(
    settings: KafkaSettings, record_id: int, stored: StoredQuarantine | None
) -> QuarantinedRecord:
    """The quarantined record to replay, or ReplayRefusedError saying why it cannot be."""
    if stored is None:
        msg = f"no quarantined record {record_id}"
        raise ReplayRefusedError(msg)
    record = stored.record
    if stored.replayed_at is not None:
        msg = (
            f"quarantined record {record_id} ({record.origin}) was already replayed "
            f"at {stored.replayed_at.isoformat()}"
        )
        raise ReplayRefusedError(msg)
    if record.topic != settings.orders_topic:
        msg = (
            f"quarantined record {record_id} came from topic {record.topic}, not "
            f"{settings.orders_topic}: run with KAFKA_ORDERS_TOPIC={record.topic}"
        )
        raise ReplayRefusedError(msg)
    if record.key is None:
        msg = (
            f"quarantined record {record_id} has no key: replayed, it would land on a random "
            "partition"
        )
        raise ReplayRefusedError(msg)
    return record


async def replay_quarantined(
    settings: KafkaSettings, engine: AsyncEngine, record_id: int
) -> tuple[int, int]:
    """Produce quarantined record `record_id` to the orders topic again and mark it replayed;
    its new partition/offset.

    The row stays locked from the check to the mark, so it is replayed once; only a send whose
    acknowledgement is lost (timeout) can leave it unmarked after it reached the topic, and
    replaying it again then is harmless (the worker stores an order once).
    """
    producer = await _started_producer(settings)
    try:
        async with engine.begin() as connection:
            await intake.bound_statements(connection, DB_TIMEOUT_S)
            stored = await find_quarantined(connection, record_id, lock=True)
            record = replayable(settings, record_id, stored)
            appended = provenance.first_append(
                record.headers, record.timestamp, record.timestamp_type
            )
            replayed_from = f"{QUARANTINE_SOURCE}{record_id}"
            headers = provenance.replay_headers(record.headers, appended, replayed_from)
            sent = await _send(settings, connection, producer, record.key, record.value, headers)
            await mark_replayed(connection, record_id)
    finally:
        await close_producer(producer, settings.request_timeout_ms / 1000)
    return sent


async def _started_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    producer = build_producer(settings)
    try:
        await bounded(settings, "connecting the producer", producer.start())
    except BaseException:
        await close_producer(producer, settings.request_timeout_ms / 1000)
        raise
    return producer


async def _partition(
    settings: KafkaSettings, connection: AsyncConnection, producer: AIOKafkaProducer, key: bytes
) -> int:
    """The partition the API would choose for `key` now; ReplayRefusedError while intake is
    closed to it. The intake row stays share-locked until the caller's transaction ends."""
    topic = settings.orders_topic
    state = await intake.read_state(connection, topic, for_share=True)
    found = await bounded(settings, f"reading {topic}'s partitions", producer.partitions_for(topic))
    count = len(found)
    if state is None:  # never registered (`orders migrate` does): the count the topic has
        return partition_for(key, count)
    if state.paused:
        msg = (
            f"intake of {topic} is paused ({state.reason or 'orders topics grow'}): a record "
            "sent now could break its customer's order; replay it once intake has resumed"
        )
        raise ReplayRefusedError(msg)
    if state.partitions != count:
        msg = (
            f"{topic} has {count} partitions but intake registers {state.partitions} (the API "
            f"refuses orders): run `orders topics grow --partitions {count} --execute` first"
        )
        raise ReplayRefusedError(msg)
    return partition_for(key, state.partitions)


async def _send(
    settings: KafkaSettings,
    connection: AsyncConnection,
    producer: AIOKafkaProducer,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[provenance.Header],
) -> tuple[int, int]:
    """Send to the orders topic through the intake gate (the module docstring)."""
    assert key is not None  # find_dead_letter and replayable refuse a record without one
    partition = await _partition(settings, connection, producer, key)
    sending = producer.send_and_wait(
        settings.orders_topic, value, key=key, partition=partition, headers=list(headers)
    )
    sent = await bounded(settings, f"sending to {settings.orders_topic}", sending)
    return sent.partition, sent.offset

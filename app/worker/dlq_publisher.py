"""Poison records go to the dead-letter topic, with headers that say where they came from.

A letter the topic refuses for itself (too large) is handed back to the caller, who keeps it in
PostgreSQL's quarantine instead; so is every letter once the topic has been unreachable for
longer than a bound (see `unreachable_for`). Until then a failure is raised, and the batch that
holds the letters is retried: dead letters are at least once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from app.dlq_headers import (
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_FAILED_AT,
    H_OFFSET,
    H_PARTITION,
    H_TIMESTAMP,
    H_TIMESTAMP_TYPE,
    H_TOPIC,
    H_WORKER,
)
from app.publisher import build_producer, close_producer
from app.settings import KafkaSettings
from app.worker.failures import Verdict, classify, describe


@dataclass(frozen=True)
class Letter:
    """A record that goes to the dead-letter topic, and why."""

    record: ConsumerRecord[bytes, bytes]
    error: BaseException


@dataclass(frozen=True)
class Undeliverable:
    """A letter the dead-letter topic did not take: the caller quarantines it."""

    letter: Letter
    reason: str


def dead_letter_headers(
    record: ConsumerRecord[bytes, bytes], error: BaseException, worker: str
) -> list[tuple[str, bytes]]:
    """The original record's headers, plus where it came from and why it was refused."""
    provenance = [
        (H_TOPIC, record.topic.encode()),
        (H_PARTITION, str(record.partition).encode()),
        (H_OFFSET, str(record.offset).encode()),
        (H_TIMESTAMP, str(record.timestamp).encode()),
        (H_TIMESTAMP_TYPE, str(record.timestamp_type).encode()),
        (H_ERROR_CLASS, type(error).__name__.encode()),
        (H_ERROR_MESSAGE, _utf8(describe(error))),
        (H_WORKER, worker.encode()),
        (H_FAILED_AT, datetime.now(UTC).isoformat().encode()),
    ]
    return [*list(record.headers or ()), *provenance]


def _utf8(text: str) -> bytes:
    """Text as UTF-8, whatever it holds: a lone surrogate echoed from a hostile record would
    make a plain `.encode()` raise, and fail (so stall) the batch."""
    return text.encode("utf-8", "backslashreplace")


class DeadLetterPublisher:
    def __init__(self, settings: KafkaSettings, worker: str, timeout_s: float) -> None:
        self._settings = settings
        self._worker = worker
        self._timeout = timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._failing_since: float | None = None
        self._last_failure = 0.0
        # Failures further apart than this are separate outages (a publish attempt lasts at
        # most `timeout_s`; the batch that holds the letters is retried well within a minute).
        self._outage_gap_s = timeout_s * 2 + 60.0

    async def start(self) -> None:
        producer = build_producer(self._settings)
        try:
            await asyncio.wait_for(producer.start(), self._timeout)
        except (TimeoutError, KafkaError):
            await close_producer(producer, self._timeout)
            raise
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await close_producer(self._producer, self._timeout)
            self._producer = None

    def unreachable_for(self) -> float:
        """Seconds since the dead-letter topic last failed to take letters, and has not taken
        any since (0 while it works)."""
        if self._failing_since is None:
            return 0.0
        return time.monotonic() - self._failing_since

    async def publish(self, letters: list[Letter]) -> list[Undeliverable]:
        """Send every letter and wait for acks=all; return those the topic refused for
        themselves (too large for it). Raises if the topic cannot be reached in time.

        After any failure the producer is rebuilt before the next try: a fatal sequence error
        or a dead sender task would otherwise fail every later batch holding poison.
        """
        if not letters:
            return []
        try:
            async with asyncio.timeout(self._timeout):
                if self._producer is None:
                    await self.start()
                assert self._producer is not None
                refused = await self._send_all(self._producer, letters)
        except (TimeoutError, KafkaError, OSError):
            now = time.monotonic()
            # An outage is failures in a row; one long after the last (the batches between
            # were fenced or revoked, and never tried) starts a new one.
            if self._failing_since is None or now - self._last_failure > self._outage_gap_s:
                self._failing_since = now
            self._last_failure = now
            await self.stop()
            raise
        self._failing_since = None
        return refused

    async def _send_all(
        self, producer: AIOKafkaProducer, letters: list[Letter]
    ) -> list[Undeliverable]:
        refused: list[Undeliverable] = []
        sent: list[tuple[Letter, asyncio.Future[object]]] = []
        for letter in letters:
            record = letter.record
            try:
                delivery = await producer.send(
                    self._settings.dlq_topic,
                    value=record.value,
                    key=record.key,
                    headers=dead_letter_headers(record, letter.error, self._worker),
                )
            except KafkaError as exc:
                if classify(exc) is not Verdict.RECORD:
                    raise
                refused.append(Undeliverable(letter, f"the dead-letter topic refused it: {exc!r}"))
                continue
            except Exception as exc:  # e.g. aiokafka asserts a key or a value
                # The client refuses to send this letter at all (a record with neither key nor
                # value): that belongs to the letter, and retrying would stall the partition.
                refused.append(Undeliverable(letter, f"the producer refused it: {exc!r}"))
                continue
            sent.append((letter, delivery))
        outcomes = await asyncio.gather(*(d for _, d in sent), return_exceptions=True)
        for (letter, _), outcome in zip(sent, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if classify(outcome) is not Verdict.RECORD:
                    raise outcome
                refused.append(
                    Undeliverable(letter, f"the dead-letter topic refused it: {outcome!r}")
                )
        return refused

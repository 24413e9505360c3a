"""The API's side of Kafka: one idempotent, acks=all producer, every wait bounded.

aiokafka pitfalls this module exists for:
- an idempotent producer's batches never expire, so waiting for an acknowledgement can last
  forever with the broker down: every wait here has a deadline, and missing it means "not
  accepted" (503);
- after a fatal sequence error (OutOfOrderSequenceNumber, UnknownProducerId) or a dead sender
  task the producer is unusable: it is replaced, and `ready` is false meanwhile;
- `stop()` flushes, which also waits forever on a dead broker: closing is bounded too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)
from opentelemetry.trace import Tracer

from app import contract, tracing
from app.batching import Delivery, PartitionBatches, partition_for
from app.errors import BrokerUnavailableError
from app.kafka_security import kafka_client_security
from app.settings import KafkaSettings

if TYPE_CHECKING:
    from app.api.metrics import ProducerMetrics

log = logging.getLogger(__name__)

# Errors after which the producer's sequence state is broken for good.
FATAL_PRODUCER_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId, ProducerFenced)


def _give_up(delivery: asyncio.Future[Delivery]) -> None:
    if not delivery.done():
        delivery.set_exception(TimeoutError())


def build_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-api",
        # Idempotence implies acks=all; spelled out because the guarantee depends on it.
        enable_idempotence=True,
        acks="all",
        # Records go in whole batches (app/batching.py), partitioned there with Kafka's murmur2
        # (same as the Java client): a customer lands on the same partition whichever client
        # produced it.
        compression_type=None if settings.compression_type == "none" else settings.compression_type,
        linger_ms=settings.linger_ms,
        max_batch_size=settings.max_batch_size,
        request_timeout_ms=settings.request_timeout_ms,
        **kafka_client_security(settings),
    )


async def close_producer(producer: AIOKafkaProducer, timeout: float) -> None:
    """Stop a producer within `timeout`, abandoning what the broker never acknowledged."""
    try:
        await asyncio.wait_for(producer.stop(), timeout)
    except (TimeoutError, KafkaError) as exc:
        log.warning("producer did not close cleanly within %.1fs: %r", timeout, exc)
        # stop() waits for the accumulator to drain, which never happens with the broker gone;
        # cancel the sender task (aiokafka has no public way) so no task outlives the producer.
        sender = getattr(producer, "_sender", None)
        if sender is not None and sender.sender_task is not None:
            sender.sender_task.cancel()
        # ...and fail what it still holds, or stop()'s accumulator-close task waits forever.
        accumulator = getattr(producer, "_message_accumulator", None)
        if accumulator is not None:
            accumulator.fail_all(KafkaConnectionError("producer closed before delivery"))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.client.close(), timeout)


class OrderPublisher:
    """Publishes order envelopes; keeps a healthy producer in place, replacing a broken one."""

    def __init__(
        self,
        settings: KafkaSettings,
        ack_deadline_s: float,
        ack_grace_s: float,
        tracer: Tracer | None = None,
        metrics: ProducerMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics  # None: METRICS_ENABLED=false, nothing counted
        self._tracer = tracer  # None: tracing off (app.tracing), nothing spent on it per order
        self._deadline = ack_deadline_s
        self._grace = ack_grace_s
        self._producer: AIOKafkaProducer | None = None
        self._batches: PartitionBatches | None = None
        self._broken = asyncio.Event()
        self._connected = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        # The partition count intake was told (app/api/intake.py); None: not held to one.
        self._expected_partitions: int | None = None

    async def start(self) -> None:
        """Try to connect now; if the broker is down, keep trying in the background."""
        self._supervisor = asyncio.create_task(self._supervise(), name="producer-supervisor")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), self._deadline)

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        if self._producer is not None:
            await self._retire_producer()

    def acceptance_deadline(self, accepted_at: datetime) -> datetime:
        """The instant by which the broker must have appended an order accepted now."""
        return accepted_at + timedelta(seconds=self._deadline)

    @property
    def started(self) -> bool:
        return self._producer is not None and not self._broken.is_set() and self._sender_alive()

    async def broker_reachable(self, timeout: float) -> bool:
        """A metadata round trip to any broker, bounded by `timeout`."""
        if not self.started:
            return False
        assert self._producer is not None
        try:
            return bool(await asyncio.wait_for(self._producer.client.fetch_all_metadata(), timeout))
        except (TimeoutError, KafkaError):
            return False

    def expect_partitions(self, count: int | None) -> None:
        """Hold every order to `count` partitions (None: no check): a producer whose metadata
        shows another count (a `kafka-topics --alter` behind the API's back) refuses the order
        (503 partition_count_changed) rather than move its customer to another partition."""
        self._expected_partitions = count

    async def partition_count(self, refresh: bool = False) -> int | None:
        """The orders topic's partition count in this producer's metadata; None without a
        producer or before its first metadata of the topic. `refresh` asks the broker first
        (bounded by the ack deadline; a failed refresh leaves the count it knew)."""
        producer = self._producer
        if producer is None or not self.started:
            return None
        topic = self._settings.orders_topic
        if refresh:
            with contextlib.suppress(TimeoutError, KafkaError):
                # Tracked from now on (done at once when it is already), then asked again.
                await asyncio.wait_for(producer.client.add_topic(topic), self._deadline)
                await asyncio.wait_for(producer.client.force_metadata_update(), self._deadline)
        known = producer.client.cluster.partitions_for_topic(topic)
        return len(known) if known else None

    async def publish(self, envelope: contract.OrderEnvelope, request_id: str) -> Delivery:
        """Produce one order and wait for acks=all, or raise BrokerUnavailableError in time.

        Accepted means: acknowledged by every in-sync replica AND appended by the broker before
        the envelope's `accept_by` (the worker discards records appended later, so a late
        acknowledgement must not become a 202).
        """
        if self._tracer is None:
            return await self._publish(envelope, request_id)
        topic = self._settings.orders_topic
        with tracing.publishing(self._tracer, topic, envelope.order_id) as (span, trace_headers):
            delivery = await self._publish(envelope, request_id, trace_headers)
            tracing.acknowledged(span, delivery.partition, delivery.offset)
            return delivery

    async def _publish(
        self,
        envelope: contract.OrderEnvelope,
        request_id: str,
        trace_headers: Sequence[tuple[str, bytes]] = (),
    ) -> Delivery:
        producer, batches = self._producer, self._batches
        if producer is None or batches is None or not self.started:
            msg = "Kafka producer is not connected"
            raise BrokerUnavailableError(msg, "broker_not_connected")
        value, headers = contract.encode(envelope, request_id, trace_headers)
        key = envelope.key
        known = producer.client.cluster.partitions_for_topic(self._settings.orders_topic)
        count = len(known) if known else await self._fetch_partitions(producer)
        expected = self._expected_partitions
        if expected is not None and count != expected:
            msg = (
                f"the topic has {count} partitions for this producer, intake was told {expected}: "
                "producing would move customers to other partitions"
            )
            raise BrokerUnavailableError(msg, "partition_count_changed")
        partition = partition_for(key, count)
        metrics = self._metrics
        appended_at = time.perf_counter()
        try:
            delivery = batches.append(partition, key, value, headers)
        except KafkaError as exc:  # closed while the metadata was fetched: being replaced
            if metrics is not None:
                metrics.failed(exc)
            msg = f"Kafka producer is being replaced: {type(exc).__name__}"
            raise BrokerUnavailableError(msg, "producer_replacing") from exc
        # The record's own future carries the deadline (cheaper than a timeout scope per
        # request); a record whose batch is still queued when every wait expired is not sent.
        expiry = asyncio.get_running_loop().call_later(
            self._deadline + self._grace, _give_up, delivery
        )
        try:
            acked = await delivery
        except (TimeoutError, KafkaError) as exc:
            if metrics is not None:
                metrics.failed(exc)
            raise self._unavailable(exc) from exc
        finally:
            expiry.cancel()
        if metrics is not None:
            metrics.ack_seconds.observe(time.perf_counter() - appended_at)
        if acked.offset < 0:
            # A retried batch the broker already had (DuplicateSequenceNumber): aiokafka reports
            # no offset and no append time, so whether it was in time is unknown. Not a 202.
            msg = "Kafka acknowledged a retry without its append time; the outcome is unknown"
            raise BrokerUnavailableError(msg, "outcome_unknown")
        if not contract.appended_in_time(envelope, acked.timestamp, acked.timestamp_type):
            msg = "Kafka appended the order after its acceptance deadline; it will not be processed"
            raise BrokerUnavailableError(msg, "appended_late")
        return acked

    def _unavailable(self, exc: TimeoutError | KafkaError) -> BrokerUnavailableError:
        """What a failed delivery means for the order; a fatal error also retires the producer."""
        if isinstance(exc, TimeoutError):
            msg = f"no acknowledgement from Kafka within {self._deadline:.1f}s"
            return BrokerUnavailableError(msg, "ack_timeout")
        if isinstance(exc, FATAL_PRODUCER_ERRORS):
            log.error("fatal producer error, replacing the producer", exc_info=exc)
            self._broken.set()
            msg = f"Kafka producer failed: {type(exc).__name__}"
            return BrokerUnavailableError(msg, "producer_fatal")
        msg = f"Kafka refused the record: {type(exc).__name__}"
        return BrokerUnavailableError(msg, "broker_refused")

    async def _fetch_partitions(self, producer: AIOKafkaProducer) -> int:
        """The topic's partition count, for a producer that has no metadata for it yet."""
        topic = self._settings.orders_topic
        try:
            return len(await asyncio.wait_for(producer.partitions_for(topic), self._deadline))
        except (TimeoutError, KafkaError) as exc:
            if self._metrics is not None:
                self._metrics.failed(exc)
            msg = f"no metadata for topic {topic!r} from Kafka: {type(exc).__name__}"
            raise BrokerUnavailableError(msg, "no_metadata") from exc

    def _sender_alive(self) -> bool:
        # aiokafka exposes no health flag; a finished sender task means nothing will be delivered.
        sender = getattr(self._producer, "_sender", None)
        task = getattr(sender, "sender_task", None)
        return task is not None and not task.done()

    async def _retire_producer(self) -> None:
        producer, batches = self._producer, self._batches
        self._producer = self._batches = None
        if self._metrics is not None:
            self._metrics.connected(False)
        if batches is not None:
            await batches.close()
        if producer is not None:
            await close_producer(producer, self._deadline)

    async def _supervise(self) -> None:
        backoff = 0.2
        while True:
            if self._producer is not None and (self._broken.is_set() or not self._sender_alive()):
                self._connected.clear()
                if self._metrics is not None:
                    self._metrics.replaced()
                await self._retire_producer()
            if self._producer is None:
                producer = build_producer(self._settings)
                try:
                    # start() waits for a producer id, forever if no broker answers: bound it.
                    await asyncio.wait_for(producer.start(), self._deadline)
                except (TimeoutError, KafkaError, OSError) as exc:
                    log.warning(
                        "Kafka producer could not start (%r); retrying in %.1fs", exc, backoff
                    )
                    await close_producer(producer, 1.0)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                self._producer, backoff = producer, 0.2
                self._batches = PartitionBatches(
                    producer, self._settings.orders_topic, self._metrics
                )
                self._broken.clear()
                self._connected.set()
                if self._metrics is not None:
                    self._metrics.connected(True)
                log.info("Kafka producer connected to %s", self._settings.bootstrap_servers)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._broken.wait(), 1.0)

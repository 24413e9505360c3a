"""The project's error hierarchy. Each class says whether retrying the same thing can succeed."""

from __future__ import annotations

from typing import Literal


class OrdersError(Exception):
    """Root of every error this project raises on purpose."""

    retriable: bool = False


class ConfigurationError(OrdersError):
    """A setting is missing or invalid; the process cannot start."""


# Why the producer could not accept an order: the label of orders_http_unavailable_total{reason}
# (app/api/metrics.py), a fixed set so the metric's series stay bounded.
BrokerUnavailableReason = Literal[
    "broker_not_connected",  # no producer (starting, or the broker down)
    "producer_replacing",  # the producer was closed while the order was being appended
    "no_metadata",  # the topic's partition count could not be fetched in time
    "ack_timeout",  # no acks=all acknowledgement within the deadline (and its grace)
    "producer_fatal",  # a fatal sequence error: the producer is being replaced
    "broker_refused",  # the broker answered the batch with an error
    "outcome_unknown",  # a retried batch acknowledged without its offset and append time
    "appended_late",  # appended after the order's acceptance deadline: never processed
    # the producer sees another partition count than intake was told (app/api/intake.py): a
    # `kafka-topics --alter` behind the API's back; producing would move customers' partitions
    "partition_count_changed",
    "unspecified",  # a raise that names none
]


class BrokerUnavailableError(OrdersError):
    """Kafka did not acknowledge in time; the order was not accepted and may be retried."""

    retriable = True

    def __init__(self, message: str, reason: BrokerUnavailableReason = "unspecified") -> None:
        super().__init__(message)
        self.reason: BrokerUnavailableReason = reason


# Why the API's intake gate (app/api/intake.py) refuses an order before any work: labels of
# orders_http_unavailable_total{reason} too.
IntakeClosedReason = Literal[
    "intake_paused",  # `orders topics grow` paused intake (or the process is reopening after it)
    "intake_unknown",  # the intake state was not read for API_INTAKE_STALE_S (or not yet)
    "partition_count_changed",  # the producer's partition count is not the one registered
]


class IntakeClosedError(OrdersError):
    """The API takes no orders now; nothing was produced, and retrying later may succeed."""

    retriable = True

    def __init__(self, message: str, reason: IntakeClosedReason) -> None:
        super().__init__(message)
        self.reason: IntakeClosedReason = reason


class DatabaseUnavailableError(OrdersError):
    """PostgreSQL could not be reached or a transaction failed for a transient reason."""

    retriable = True


class IdempotencyKeyInFlightError(OrdersError):
    """A request with this Idempotency-Key is still being answered; retry once it is."""

    retriable = True


class IdempotencyKeyReusedError(OrdersError):
    """This Idempotency-Key was used before with a different body; retrying cannot succeed."""


class PoisonRecordError(OrdersError):
    """A record that can never be processed (bad JSON, wrong schema, unknown version)."""

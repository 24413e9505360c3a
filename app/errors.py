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
    "unspecified",  # a raise that names none
]


class BrokerUnavailableError(OrdersError):
    """Kafka did not acknowledge in time; the order was not accepted and may be retried."""

    retriable = True

    def __init__(self, message: str, reason: BrokerUnavailableReason = "unspecified") -> None:
        super().__init__(message)
        self.reason: BrokerUnavailableReason = reason


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

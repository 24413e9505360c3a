"""The project's error hierarchy. Each class says whether retrying the same thing can succeed."""

from __future__ import annotations


class OrdersError(Exception):
    """Root of every error this project raises on purpose."""

    retriable: bool = False


class ConfigurationError(OrdersError):
    """A setting is missing or invalid; the process cannot start."""


class BrokerUnavailableError(OrdersError):
    """Kafka did not acknowledge in time; the order was not accepted and may be retried."""

    retriable = True


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

"""The one place that decides what a failed batch means: wait and retry, or isolate records.

- TRANSIENT: the same batch can succeed later (a lost connection, a timeout, a server shutting
  down, a serialization failure or deadlock, the broker away). Retry it from its start after a
  back-off; never skip anything.
- RECORD: some record of the batch fails the same way every time (PostgreSQL refused its data:
  SQLSTATE class 22 or 23, or the contract refused it). Retrying would stall the partition, and
  with it every partition this member owns. Isolate the offending records, dead-letter exactly
  those, and store the rest.

Everything not known to be deterministic is TRANSIENT, on purpose: a bug in our own SQL or a
missing table (class 42), or an exception we did not foresee, fails every batch alike. Isolating
would dead-letter every order; retrying stalls loudly, where an operator sees it and fixes it.
"""

from __future__ import annotations

import enum

from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError
from sqlalchemy.exc import DBAPIError

from app.errors import OrdersError


class Verdict(enum.Enum):
    TRANSIENT = "transient"
    RECORD = "record"


# SQLSTATE classes whose errors belong to the data of a statement, not to the server's state.
_DATA_CLASSES = ("22", "23")  # data exception, integrity constraint violation
# Two writers that ever raced to number one customer's orders: the loser retries and then sees
# the winner's sequence (app.worker.order_store). A race, not a property of the record.
_RACE_CONSTRAINTS = {"uq_orders_customer_id"}
# Kafka refusals that belong to one record: it is too large for the topic it was sent to.
_RECORD_KAFKA_ERRORS = (MessageSizeTooLargeError, RecordTooLargeError)


def classify(exc: BaseException) -> Verdict:
    if isinstance(exc, OrdersError):
        return Verdict.TRANSIENT if exc.retriable else Verdict.RECORD
    if isinstance(exc, DBAPIError):
        return _classify_sqlstate(sqlstate(exc), constraint(exc))
    if isinstance(exc, _RECORD_KAFKA_ERRORS):
        return Verdict.RECORD
    return Verdict.TRANSIENT  # every other Kafka error, and everything not foreseen


def _classify_sqlstate(state: str | None, constraint_name: str | None) -> Verdict:
    if state is None or state[:2] not in _DATA_CLASSES:
        # 08 connection, 53 resources, 57 operator intervention, 40001/40P01 serialization and
        # deadlock, 55P03 lock not available, and (see the module docstring) everything else.
        return Verdict.TRANSIENT
    if constraint_name in _RACE_CONSTRAINTS:
        return Verdict.TRANSIENT
    return Verdict.RECORD


def sqlstate(exc: DBAPIError) -> str | None:
    """The SQLSTATE of a database error (asyncpg's, as SQLAlchemy's adapter exposes it)."""
    return getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)


def constraint(exc: DBAPIError) -> str | None:
    """The constraint a database error names, if any (asyncpg puts it on the cause)."""
    cause = getattr(exc.orig, "__cause__", None)
    name = getattr(cause, "constraint_name", None)
    return name if isinstance(name, str) else None


def describe(exc: BaseException) -> str:
    """A short, single-line account of an error, for dead-letter headers and logs."""
    state = sqlstate(exc) if isinstance(exc, DBAPIError) else None
    text = str(exc.orig if isinstance(exc, DBAPIError) else exc).split("\n")
    first = text[0] if text else ""
    prefix = f"SQLSTATE {state}: " if state else ""
    return f"{prefix}{first}"[:1000]

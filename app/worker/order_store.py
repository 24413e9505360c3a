"""The orders of a batch into PostgreSQL: set-based, exactly once, each customer in order.

The orders that are new are inserted (order_id is the idempotency anchor: a redelivered or
retried order changes nothing), numbering each customer's new orders on from the customer's
last stored sequence, in offset order. The caller's transaction (app.worker.batch_writer) holds
the partitions' position locks around it.

When PostgreSQL refuses the batch for something in its data (see app.worker.failures), the batch
is bisected under savepoints until each refused order stands alone: those are returned to be
dead-lettered, every other order is stored. k bad orders among n cost O(k log n) statements,
and only when something is refused; the common case is one statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.structs import ConsumerRecord
from pydantic import TypeAdapter
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, BIGINT, INTEGER, TEXT
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.contract import OrderEnvelope, OrderLine
from app.worker.failures import Verdict, classify

_LINES_JSON = TypeAdapter(tuple[OrderLine, ...])


@dataclass(frozen=True)
class IncomingOrder:
    envelope: OrderEnvelope
    partition: int
    offset: int
    # The record it came from, kept for the dead-letter topic should PostgreSQL refuse it.
    record: ConsumerRecord[bytes, bytes]


@dataclass(frozen=True)
class Refusal:
    order: IncomingOrder
    error: DBAPIError


@dataclass(frozen=True)
class InsertOutcome:
    inserted: int
    refused: list[Refusal]
    # The orders that were newly inserted (for the end-to-end latency: redeliveries excluded).
    stored: Sequence[IncomingOrder] = ()


# One array per column of a batch of orders (see _order_columns), bound to unnest().
_ORDER_ARRAYS = (
    bindparam("order_ids", type_=ARRAY(TEXT)),
    bindparam("customer_ids", type_=ARRAY(TEXT)),
    bindparam("items", type_=ARRAY(TEXT)),
    bindparam("totals", type_=ARRAY(TEXT)),
    bindparam("currencies", type_=ARRAY(TEXT)),
    bindparam("accepted_ats", type_=ARRAY(TEXT)),
    bindparam("partitions", type_=ARRAY(INTEGER)),
    bindparam("offsets", type_=ARRAY(BIGINT)),
)

# The batch as a relation: one array per column, bound to unnest().
_INCOMING = """incoming AS (
        SELECT * FROM unnest(
            CAST(:order_ids AS uuid[]), :customer_ids, :items, CAST(:totals AS numeric[]),
            :currencies, CAST(:accepted_ats AS timestamptz[]), :partitions, :offsets
        ) AS t(order_id, customer_id, items, total, currency, accepted_at,
               kafka_partition, kafka_offset)
    )"""


def _last_stored(orders: str) -> str:
    """Each customer's highest stored sequence (0 for a new customer), for `orders`' customers."""
    return f"""last_stored AS (
        SELECT c.customer_id,
               coalesce((SELECT max(o.sequence) FROM orders AS o
                         WHERE o.customer_id = c.customer_id), 0) AS sequence
        FROM (SELECT DISTINCT customer_id FROM {orders}) AS c
    )"""


# Each customer's orders live on one partition (keyed by customer id), so numbering a customer's
# new orders by offset is numbering them in the order Kafka accepted them. The next number comes
# from the customer's highest stored sequence (a backward scan of the unique index on
# (customer_id, sequence)); that unique constraint, not a lock, is what makes two writers that
# ever raced for one customer fail and retry instead of storing the same number twice.
_INSERT_ORDERS = text(
    f"""
    WITH {_INCOMING},
    fresh AS (
        SELECT DISTINCT ON (i.order_id) i.*
        FROM incoming AS i
        WHERE NOT EXISTS (SELECT 1 FROM orders AS o WHERE o.order_id = i.order_id)
        ORDER BY i.order_id, i.kafka_partition, i.kafka_offset
    ),
    numbered AS (
        SELECT f.*, row_number() OVER (
            PARTITION BY f.customer_id ORDER BY f.kafka_partition, f.kafka_offset
        ) AS n
        FROM fresh AS f
    ),
    {_last_stored("fresh")}
    INSERT INTO orders (order_id, customer_id, sequence, items, total, currency, accepted_at,
                        kafka_partition, kafka_offset)
    SELECT n.order_id, n.customer_id, l.sequence + n.n, CAST(n.items AS jsonb),
           n.total, n.currency, n.accepted_at, n.kafka_partition, n.kafka_offset
    FROM numbered AS n JOIN last_stored AS l USING (customer_id)
    RETURNING kafka_partition, kafka_offset
    """
).bindparams(*_ORDER_ARRAYS)

# The common case, tried first: no order of the batch is stored yet (redeliveries are rare).
# It skips the anti-join and numbers every order of the batch; if one turns out to be stored
# already, the primary key refuses the insert and the careful statement above runs instead.
_INSERT_NEW_ORDERS = text(
    f"""
    WITH {_INCOMING},
    {_last_stored("incoming")}
    INSERT INTO orders (order_id, customer_id, sequence, items, total, currency, accepted_at,
                        kafka_partition, kafka_offset)
    SELECT i.order_id, i.customer_id,
           l.sequence + row_number() OVER (
               PARTITION BY i.customer_id ORDER BY i.kafka_partition, i.kafka_offset
           ),
           CAST(i.items AS jsonb), i.total, i.currency, i.accepted_at,
           i.kafka_partition, i.kafka_offset
    FROM incoming AS i JOIN last_stored AS l USING (customer_id)
    """
).bindparams(*_ORDER_ARRAYS)


async def insert_orders(
    connection: AsyncConnection, orders: Sequence[IncomingOrder]
) -> InsertOutcome:
    """Insert the new orders; isolate (never raise for) the ones PostgreSQL refuses for their
    data. Any other failure is raised: the caller retries the whole batch."""
    if not orders:
        return InsertOutcome(0, [])
    try:
        stored = await _insert_orders(connection, orders)
        return InsertOutcome(len(stored), [], stored)
    except DBAPIError as exc:
        if classify(exc) is not Verdict.RECORD:
            raise
        if len(orders) == 1:
            return InsertOutcome(0, [Refusal(orders[0], exc)])
    # Halves in offset order: each customer's accepted orders keep their order of sequences.
    middle = len(orders) // 2
    first = await insert_orders(connection, orders[:middle])
    second = await insert_orders(connection, orders[middle:])
    return InsertOutcome(
        first.inserted + second.inserted,
        first.refused + second.refused,
        [*first.stored, *second.stored],
    )


async def _insert_orders(
    connection: AsyncConnection, orders: Sequence[IncomingOrder]
) -> Sequence[IncomingOrder]:
    """The orders inserted. Each statement runs under a savepoint, so that a refusal leaves the
    transaction usable."""
    columns = _order_columns(orders)
    if len({order.envelope.order_id for order in orders}) == len(orders):
        try:
            async with connection.begin_nested():
                await connection.execute(_INSERT_NEW_ORDERS, columns)
        except IntegrityError as exc:
            if not _is_order_id_conflict(exc):
                raise
        else:
            return orders  # every one of them, or the statement would have failed
    async with connection.begin_nested():
        result = await connection.execute(_INSERT_ORDERS, columns)
    # Matched by record, not order id: a batch may carry one order id twice (one is stored).
    inserted = {(row.kafka_partition, row.kafka_offset) for row in result}
    return [o for o in orders if (o.partition, o.offset) in inserted]


def _is_order_id_conflict(exc: IntegrityError) -> bool:
    constraint = getattr(getattr(exc.orig, "__cause__", None), "constraint_name", None)
    return constraint == "pk_orders"


def _order_columns(orders: Sequence[IncomingOrder]) -> dict[str, list[Any]]:
    return {
        "order_ids": [str(o.envelope.order_id) for o in orders],
        "customer_ids": [o.envelope.customer_id for o in orders],
        "items": [_LINES_JSON.dump_json(o.envelope.items).decode() for o in orders],
        "totals": [str(o.envelope.total) for o in orders],
        "currencies": [o.envelope.currency for o in orders],
        "accepted_ats": [o.envelope.accepted_at.isoformat() for o in orders],
        "partitions": [o.partition for o in orders],
        "offsets": [o.offset for o in orders],
    }

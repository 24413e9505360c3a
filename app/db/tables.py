"""The tables the pipeline writes. Wire schemas live in app.contract; these are storage only."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# One row per order, written once: order_id is the idempotency anchor for redeliveries.
orders = Table(
    "orders",
    metadata,
    Column("order_id", UUID(as_uuid=True), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("items", JSONB, nullable=False),
    Column("total", Numeric(24, 4), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("accepted_at", DateTime(timezone=True), nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("kafka_partition", Integer, nullable=False),
    Column("kafka_offset", BigInteger, nullable=False),
    UniqueConstraint("customer_id", "sequence"),
    CheckConstraint("sequence > 0", name="sequence_positive"),
)

# Where each consumer group stands on each partition: the source of truth for offsets.
# A batch may only move a position forward from where that batch began (the fence).
consumer_positions = Table(
    "consumer_positions",
    metadata,
    Column("group_id", Text, primary_key=True),
    Column("topic", Text, primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
    Column("owner", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("next_offset >= 0", name="next_offset_non_negative"),
)

"""The tables the pipeline writes. Wire schemas live in app.contract; these are storage only."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

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

# A record that could neither be stored nor dead-lettered (too large for the DLQ topic, or the
# DLQ unreachable for longer than a bound), kept whole with its provenance and error, in the same
# transaction that moves the position past it. Nothing is skipped without a trace.
quarantined_records = Table(
    "quarantined_records",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("group_id", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("record_key", LargeBinary),
    Column("record_value", LargeBinary),
    Column("header_names", ARRAY(Text), nullable=False),
    Column("header_values", ARRAY(LargeBinary), nullable=False),
    Column("record_timestamp", BigInteger, nullable=False),
    Column("record_timestamp_type", Integer, nullable=False),
    Column("error_class", Text, nullable=False),
    Column("error_message", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("worker", Text, nullable=False),
    Column("quarantined_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Set by `orders dlq replay --quarantined ID --execute` once the record is back on its topic.
    Column("replayed_at", DateTime(timezone=True)),
    UniqueConstraint("group_id", "topic", "partition", "offset"),
)

# Offset ranges a group passed without a record to process: transaction markers, aborted
# transactions, records deleted by retention or delete_records. What an operator reads to know
# what was skipped, and why.
skipped_offsets = Table(
    "skipped_offsets",
    metadata,
    Column("group_id", Text, primary_key=True),
    Column("topic", Text, primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("from_offset", BigInteger, primary_key=True),
    Column("to_offset", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("worker", Text, nullable=False),
    Column("detected_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("to_offset > from_offset", name="range"),
)

# Idempotency-Key (IETF draft "The Idempotency-Key HTTP Header Field"): per client scope and
# key, a fingerprint of the first request's body and its answer, kept until `expires_at`.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("scope", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("fingerprint", LargeBinary, nullable=False),
    Column("order_id", UUID(as_uuid=True), nullable=False),
    Column("state", Text, nullable=False),
    Column("partition", Integer),
    Column("offset", BigInteger),
    Column("lease_until", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
    CheckConstraint("state IN ('in_flight', 'completed', 'failed')", name="state"),
)

# `orders lab semantics`: each record a delivery mode's consumer stored, in arrival order (id).
# No unique constraint on the event, on purpose: at-least-once must be able to store it twice,
# and the lab counts the copies (app/lab/semantics/).
lab_deliveries = Table(
    "lab_deliveries",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("run_id", Text, nullable=False),
    Column("mode", Text, nullable=False),
    Column("event_id", BigInteger, nullable=False),
    Column("key", Text, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    Column(
        "stored_at", DateTime(timezone=True), nullable=False, server_default=func.clock_timestamp()
    ),
    Column("writer", Text, nullable=False),
    Index(None, "run_id", "mode", "event_id"),
)

# Where the lab's exactly-once-through-PostgreSQL mode stands on each partition, moved in the
# same transaction as its rows (consumer_positions, for the lab).
lab_positions = Table(
    "lab_positions",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("mode", Text, primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
    CheckConstraint("next_offset >= 0", name="next_offset_non_negative"),
)

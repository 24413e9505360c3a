"""Payments (`orders payments`): the audit trail of every charge attempt at the gateway.

payment_attempts is append-only: a member writes an attempt's `started` row and COMMITS it
before calling the gateway, then the attempt's outcome as another row (`charged`, `replayed`,
`failed`: retried, `refused`: final). An attempt whose member died mid-call keeps its `started`
row without an outcome, so the trail accounts for every call the gateway may have seen, even
the ones no member lived to hear answered. The application's role may only SELECT and INSERT:
no UPDATE, no DELETE (0003's default privileges would give both), so an audit row, once
written, stays as written. The id orders the rows as they were committed within one member.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TABLE_PRIVILEGES = {"payment_attempts": "SELECT, INSERT"}
OUTCOMES = ("started", "charged", "replayed", "failed", "refused")


def _app_role() -> str | None:
    """The application's role, quoted; None when it is the owner itself (nothing to grant)."""
    bind = op.get_bind()
    app_role = op.get_context().opts["app_role"]
    owner = bind.execute(sa.text("SELECT current_user")).scalar_one()
    if app_role == owner:
        return None
    quoted: str = bind.dialect.identifier_preparer.quote(app_role)
    return quoted


def upgrade() -> None:
    op.create_table(
        "payment_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("order_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("charge_key", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("member", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_payment_attempts"),
        sa.CheckConstraint(
            "outcome IN (" + ", ".join(f"'{o}'" for o in OUTCOMES) + ")",
            name="ck_payment_attempts_outcome",
        ),
        sa.CheckConstraint("attempt >= 1", name="ck_payment_attempts_attempt_positive"),
        # A started row has no end; an outcome row always has one.
        sa.CheckConstraint(
            "(outcome = 'started') = (finished_at IS NULL)", name="ck_payment_attempts_finished"
        ),
    )
    op.create_index("ix_payment_attempts_charge_key", "payment_attempts", ["charge_key"])
    app = _app_role()
    if app is None:
        return
    for table, privileges in TABLE_PRIVILEGES.items():
        op.execute(f"REVOKE ALL ON TABLE {table} FROM {app}")
        op.execute(f"GRANT {privileges} ON TABLE {table} TO {app}")


def downgrade() -> None:
    op.drop_index("ix_payment_attempts_charge_key", table_name="payment_attempts")
    op.drop_table("payment_attempts")

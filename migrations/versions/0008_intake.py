"""Intake: whether the API takes orders for a topic, and what each API process last said.

`orders topics grow` adds partitions to the orders topic without moving a customer's unstored
orders to another partition (README, "Growing the orders topic"): it pauses intake, waits for
every API process to acknowledge, drains the workers, adds the partitions, and resumes.

- intake_state: one row per orders topic. `orders migrate` registers the topic's partition
  count; the grow pauses and resumes it, each time under a new generation. The API processes
  read it FOR SHARE (which needs UPDATE): SELECT, INSERT, UPDATE; never DELETE.
- intake_members: each API process's heartbeat and state at the generation it last read
  (open, closing: refusing with orders still being answered, closed: none). Whoever heartbeats
  deletes rows a day old: SELECT, INSERT, UPDATE, DELETE.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLE_PRIVILEGES = {
    "intake_state": "SELECT, INSERT, UPDATE",
    "intake_members": "SELECT, INSERT, UPDATE, DELETE",
}
MEMBER_STATES = ("open", "closing", "closed")


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
        "intake_state",
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("partitions", sa.Integer(), nullable=False),
        sa.Column(
            "changed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("topic", name="pk_intake_state"),
        sa.CheckConstraint("partitions >= 1", name="partitions_positive"),
    )
    op.create_table(
        "intake_members",
        sa.Column("member", sa.Text(), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        # How long after seen_at this member is sure to be closed with every order it let in
        # answered, if it never reads the state again (its own stale bound plus its answers').
        sa.Column("closes_within_s", sa.Float(), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("member", name="pk_intake_members"),
        sa.CheckConstraint(
            "state IN (" + ", ".join(f"'{s}'" for s in MEMBER_STATES) + ")",
            name="state",
        ),
    )
    op.create_index("ix_intake_members_topic", "intake_members", ["topic"])
    app = _app_role()
    if app is None:
        return
    for table, privileges in TABLE_PRIVILEGES.items():
        op.execute(f"REVOKE ALL ON TABLE {table} FROM {app}")
        op.execute(f"GRANT {privileges} ON TABLE {table} TO {app}")


def downgrade() -> None:
    op.drop_index("ix_intake_members_topic", table_name="intake_members")
    op.drop_table("intake_members")
    op.drop_table("intake_state")

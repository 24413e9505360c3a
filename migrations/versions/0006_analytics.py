"""Real-time analytics (`orders analytics`): revenue per currency in tumbling windows.

- revenue_windows: one row per (group, window, currency), the window's order count and revenue
  so far. Each batch adds to it (`orders = orders + excluded.orders`), so a row exists from the
  first order of its window on; whether it is closed is the watermark's business (below).
  `late_orders` counts the orders added after the window had closed (corrections). The group
  is part of the key: two analytics groups on the same stream (the exact and the fast mode side
  by side, the lab's runs) must never add into each other's windows.
- analytics_watermarks: per group and partition, the latest broker append time the group has
  read there (or, for a partition it had read to the end, when it last saw that end). The
  group's watermark is the minimum over its partitions (NULL while one is unknown); a window is
  closed once the watermark minus ANALYTICS_GRACE_S has passed its end.

The exact mode also keeps its positions in consumer_positions under its own group id, moved in
the same transaction as its windows (app/db/positions.py; no change to that table here).

The application's role gets SELECT, INSERT, UPDATE (the members add and move) and DELETE (the
lab removes its runs' rows afterwards, as it does in lab_deliveries); 0003's default privileges
would also give DELETE, and nothing else: this states them, as 0003 asks of every later table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLE_PRIVILEGES = {
    "revenue_windows": "SELECT, INSERT, UPDATE, DELETE",
    "analytics_watermarks": "SELECT, INSERT, UPDATE, DELETE",
}


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
        "revenue_windows",
        sa.Column("group_id", sa.Text(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("orders", sa.BigInteger(), nullable=False),
        sa.Column("revenue", sa.Numeric(), nullable=False),
        sa.Column("late_orders", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("group_id", "window_start", "currency", name="pk_revenue_windows"),
        sa.CheckConstraint("window_end > window_start", name="ck_revenue_windows_window_order"),
        sa.CheckConstraint("orders >= 0", name="ck_revenue_windows_orders_non_negative"),
        sa.CheckConstraint(
            "late_orders >= 0 AND late_orders <= orders", name="ck_revenue_windows_late_orders"
        ),
    )
    op.create_table(
        "analytics_watermarks",
        sa.Column("group_id", sa.Text(), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        # NULL: the partition is assigned but nothing is known of it yet (closes nothing).
        sa.Column("appended_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("group_id", "topic", "partition", name="pk_analytics_watermarks"),
    )
    app = _app_role()
    if app is None:
        return
    for table, privileges in TABLE_PRIVILEGES.items():
        op.execute(f"REVOKE ALL ON TABLE {table} FROM {app}")
        op.execute(f"GRANT {privileges} ON TABLE {table} TO {app}")


def downgrade() -> None:
    op.drop_table("analytics_watermarks")
    op.drop_table("revenue_windows")

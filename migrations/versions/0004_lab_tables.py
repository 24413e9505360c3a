"""The lab's tables (`orders lab semantics`): what each delivery mode stored, and where it stands.

- lab_deliveries: one row per record a mode's consumer stored, in arrival order (`id`), with NO
  unique constraint on the event: at-least-once must be able to store an event twice, and the
  lab counts the copies. The index serves the per-run reads and the exactly-once mode's
  "already stored?" check.
- lab_positions: the exactly-once-through-PostgreSQL mode's offsets, one row per partition,
  moved in the same transaction as the rows (the pipeline's consumer_positions, for the lab).

The application's role (the lab runs as it) gets only what the lab does: deliveries are
inserted, read and deleted after the run (never updated); positions are also moved (UPDATE).
The default privileges of 0003 would give both tables SELECT, INSERT, UPDATE, DELETE: this
narrows them, as 0003 asks of every later table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLE_PRIVILEGES = {
    "lab_deliveries": "SELECT, INSERT, DELETE",
    "lab_positions": "SELECT, INSERT, UPDATE, DELETE",
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
        "lab_deliveries",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "stored_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.Column("writer", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_lab_deliveries"),
    )
    op.create_index("ix_lab_deliveries_run_id", "lab_deliveries", ["run_id", "mode", "event_id"])
    op.create_table(
        "lab_positions",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "mode", "partition", name="pk_lab_positions"),
        sa.CheckConstraint("next_offset >= 0", name="ck_lab_positions_next_offset_non_negative"),
    )
    app = _app_role()
    if app is None:
        return
    for table, privileges in TABLE_PRIVILEGES.items():
        op.execute(f"REVOKE ALL ON TABLE {table} FROM {app}")
        op.execute(f"GRANT {privileges} ON TABLE {table} TO {app}")
    # lab_deliveries.id is an identity column: inserting draws from its sequence.
    op.execute(f"GRANT USAGE ON SEQUENCE lab_deliveries_id_seq TO {app}")


def downgrade() -> None:
    op.drop_table("lab_positions")
    op.drop_index("ix_lab_deliveries_run_id", table_name="lab_deliveries")
    op.drop_table("lab_deliveries")

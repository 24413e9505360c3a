"""The application's role may DELETE from consumer_positions: `orders offsets delete` needs it.

The course's `consumer group delete` removes a group's offsets; here the worker group's offsets
live in PostgreSQL (the truth) as well as in Kafka (the mirror), and deleting only Kafka's would
leave the workers resuming from PostgreSQL as if nothing had happened. So the operator command
deletes the group's rows, and it runs as the application's role (DATABASE_URL), like
`orders offsets reset`, which moves positions with the UPDATE 0003 granted. The workers never
delete a position: they still only insert, lock and move them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _app_role() -> str | None:
    """The application's role, quoted; None when it is the owner itself (it may do anything to
    its own tables: nothing to grant, nothing to revoke). 0003 checked that the role exists."""
    bind = op.get_bind()
    app_role = op.get_context().opts["app_role"]
    owner = bind.execute(sa.text("SELECT current_user")).scalar_one()
    if app_role == owner:
        return None
    quoted: str = bind.dialect.identifier_preparer.quote(app_role)
    return quoted


def upgrade() -> None:
    app = _app_role()
    if app is not None:
        op.execute(f"GRANT DELETE ON TABLE consumer_positions TO {app}")


def downgrade() -> None:
    app = _app_role()
    if app is not None:
        op.execute(f"REVOKE DELETE ON TABLE consumer_positions FROM {app}")

"""Least privilege: the application's role gets the DML it needs, nothing else.

The role running the migrations owns the schema (DDL); the application's role (DATABASE_APP_ROLE,
else DATABASE_URL's user, passed in by migrations/env.py) may connect, use schema public, and
read and write the pipeline's tables, each with only the statements the app runs on it:

- orders, skipped_offsets: SELECT, INSERT (stored once, never changed by the app);
- consumer_positions: + UPDATE (positions move; SELECT ... FOR UPDATE needs it too);
- quarantined_records: + UPDATE (`orders dlq replay` stamps replayed_at);
- idempotency_keys: + UPDATE, DELETE (leases, answers, the purge of expired keys);
- alembic_version: nothing.

No TRUNCATE, REFERENCES, TRIGGER, no CREATE anywhere, no TEMPORARY. Tables the owner creates
later get SELECT, INSERT, UPDATE, DELETE by default (ALTER DEFAULT PRIVILEGES), so the next
migration that adds a table works at once; it should narrow them the way this one does.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLE_PRIVILEGES = {
    "orders": "SELECT, INSERT",
    "skipped_offsets": "SELECT, INSERT",
    "consumer_positions": "SELECT, INSERT, UPDATE",
    "quarantined_records": "SELECT, INSERT, UPDATE",
    "idempotency_keys": "SELECT, INSERT, UPDATE, DELETE",
}
FUTURE_TABLES = "SELECT, INSERT, UPDATE, DELETE"


def _names() -> tuple[str, str, str] | None:
    """(database, owner, app role), each quoted as an identifier; None when there is no
    separate application role (it is the owner itself: nothing to grant, nothing to revoke)."""
    bind = op.get_bind()
    app_role = op.get_context().opts["app_role"]
    database, owner, exists = bind.execute(
        sa.text(
            "SELECT current_database(), current_user,"
            " EXISTS (SELECT FROM pg_roles WHERE rolname = :role)"
        ),
        {"role": app_role},
    ).one()
    if not exists:
        msg = (
            f"the application's role {app_role!r} does not exist: `make up` creates it locally, "
            "docker/postgres-init in compose; or set DATABASE_APP_ROLE"
        )
        raise RuntimeError(msg)
    if app_role == owner:
        return None
    quote = bind.dialect.identifier_preparer.quote
    return quote(database), quote(owner), quote(app_role)


def upgrade() -> None:
    names = _names()
    # No one creates objects in schema public but its owner (PostgreSQL 15's default; earlier
    # servers let every role create there).
    op.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    if names is None:
        return
    database, owner, app = names
    # Only the roles named here connect (the owner and superusers always may); no temp tables.
    op.execute(f"REVOKE ALL ON DATABASE {database} FROM PUBLIC")
    op.execute(f"GRANT CONNECT ON DATABASE {database} TO {app}")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {app}")
    for table, privileges in TABLE_PRIVILEGES.items():
        op.execute(f"GRANT {privileges} ON TABLE {table} TO {app}")
    # quarantined_records.id is an identity column: inserting draws from its sequence.
    op.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {app}")
    op.execute(
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "
        f"GRANT {FUTURE_TABLES} ON TABLES TO {app}"
    )
    op.execute(
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "
        f"GRANT USAGE ON SEQUENCES TO {app}"
    )


def downgrade() -> None:
    """Revoke everything granted above. Back to PostgreSQL's defaults for the database
    (CONNECT and TEMPORARY for PUBLIC); schema public stays closed to CREATE, as on 15+."""
    names = _names()
    if names is None:
        return
    database, owner, app = names
    op.execute(
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "
        f"REVOKE {FUTURE_TABLES} ON TABLES FROM {app}"
    )
    op.execute(
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "
        f"REVOKE USAGE ON SEQUENCES FROM {app}"
    )
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {app}")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {app}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {app}")
    op.execute(f"REVOKE CONNECT ON DATABASE {database} FROM {app}")
    op.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {database} TO PUBLIC")

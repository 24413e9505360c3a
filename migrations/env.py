"""Alembic environment: async engine, NullPool, migrations run through run_sync.

`config.attributes["app_role"]` names the role the migrations grant the application's
privileges to (app/db/migrate.py sets it from the settings).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.db.tables import metadata
from app.settings import get_settings

config = context.config


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or str(get_settings().database.owner_url)


def app_role() -> str:
    role = config.attributes.get("app_role") or get_settings().database.granted_role
    if not role:
        msg = "no application role to grant to: set DATABASE_APP_ROLE or a user in DATABASE_URL"
        raise RuntimeError(msg)
    return str(role)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # Read by the migrations that grant privileges (0003 and later).
        app_role=app_role(),
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(_url(), poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True, app_role=app_role())
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())

"""Apply the Alembic migrations in `migrations/` to the configured database.

Migrations connect as the schema's owner (DATABASE_MIGRATION_URL, else DATABASE_URL) and grant
the application's role (DATABASE_APP_ROLE, else DATABASE_URL's user) only the DML it needs.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from app.settings import DatabaseSettings

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(settings: DatabaseSettings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's config is ConfigParser-based: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", str(settings.owner_url).replace("%", "%%"))
    config.attributes["app_role"] = settings.granted_role
    return config


def upgrade_database(settings: DatabaseSettings, revision: str = "head") -> None:
    """Bring the schema to `revision` (idempotent). Runs its own event loop."""
    command.upgrade(alembic_config(settings), revision)


def downgrade_database(settings: DatabaseSettings, revision: str) -> None:
    """Take the schema back to `revision`. Runs its own event loop."""
    command.downgrade(alembic_config(settings), revision)

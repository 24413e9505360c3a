"""Apply the Alembic migrations in `migrations/` to the configured database."""

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
    config.set_main_option("sqlalchemy.url", str(settings.url).replace("%", "%%"))
    return config


def upgrade_database(settings: DatabaseSettings) -> None:
    """Bring the schema to the newest revision (idempotent). Runs its own event loop."""
    command.upgrade(alembic_config(settings), "head")

"""Configuration: defaults point at `make up`; a bad value names its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.errors import ConfigurationError
from app.settings import DatabaseSettings, load_settings


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty state folder, in an empty working directory (no .env), no DATABASE_* set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ORDERS_STATE_DIR", str(tmp_path / "state"))
    for variable in ("DATABASE_URL", "DATABASE_MIGRATION_URL", "DATABASE_APP_ROLE"):
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / "state").mkdir()
    return tmp_path / "state"


def test_defaults_point_at_the_local_services(state: Path) -> None:
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert str(settings.database.url) == "postgresql+asyncpg://orders_app@127.0.0.1:5432/orders"
    assert settings.database.migration_url is None
    assert settings.kafka.partitions == 6
    assert settings.worker.group_id == "order-workers"


def test_environment_variables_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db:5433/x")
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    # A plain postgresql:// URL is given the asyncpg driver.
    assert str(settings.database.url) == "postgresql+asyncpg://u:p@db:5433/x"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KAFKA_PARTITIONS", "zero"),
        ("API_PORT", "70000"),
        ("DATABASE_URL", "mysql://u:p@h/db"),
        ("KAFKA_COMPRESSION_TYPE", "brotli"),
        ("WORKER_MAX_RECORDS", "0"),
        ("API_IDEMPOTENCY_RETENTION_S", "0"),
    ],
)
def test_a_bad_value_fails_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable):
        load_settings()


def test_inconsistent_replication_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_MIN_INSYNC_REPLICAS", "2")
    with pytest.raises(ConfigurationError, match="KAFKA_MIN_INSYNC_REPLICAS"):
        load_settings()


def test_a_rebalance_timeout_shorter_than_a_batch_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORKER_BATCH_TIMEOUT_S", "60")
    with pytest.raises(ConfigurationError, match="WORKER_REBALANCE_TIMEOUT_MS"):
        load_settings()


# --- PostgreSQL: two roles, credentials from `make up`'s state file, no default passwords ---

APP = "postgresql+asyncpg://orders_app:s3cret-app@127.0.0.1:15432/orders"
OWNER = "postgresql+asyncpg://orders_owner:s3cret-owner@127.0.0.1:15432/orders"


def test_make_ups_credentials_are_read_from_the_state_folder(state: Path) -> None:
    (state / "services.env").write_text(
        f"# written by make up\nDATABASE_URL={APP}\nDATABASE_MIGRATION_URL={OWNER}\n"
    )
    database = load_settings().database
    assert str(database.url) == APP
    assert str(database.owner_url) == OWNER
    assert database.granted_role == "orders_app"


def test_the_environment_and_dotenv_win_over_the_state_folder(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (state / "services.env").write_text(f"DATABASE_URL={APP}\nDATABASE_MIGRATION_URL={OWNER}\n")
    elsewhere = "postgresql+asyncpg://reader:another-one@db.example:5432/orders"
    (state.parent / ".env").write_text(f"DATABASE_MIGRATION_URL={elsewhere}\n")
    monkeypatch.setenv("DATABASE_URL", elsewhere)
    database = load_settings().database
    assert str(database.url) == elsewhere
    assert str(database.migration_url) == elsewhere


def test_migrations_fall_back_to_the_app_url_and_grant_to_its_user(state: Path) -> None:
    database = DatabaseSettings(url=APP)  # type: ignore[arg-type]
    assert database.owner_url == database.url
    assert database.granted_role == "orders_app"
    named = DatabaseSettings(url=APP, app_role="orders_reader")  # type: ignore[arg-type]
    assert named.granted_role == "orders_reader"


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("DATABASE_URL", "postgresql+asyncpg://orders:orders@127.0.0.1:5432/orders"),
        ("DATABASE_URL", "postgresql://app:app@db/orders"),
        ("DATABASE_URL", "postgresql://app:Postgres@db/orders"),
        ("DATABASE_URL", "postgresql://app:change-me@db/orders"),
        ("DATABASE_MIGRATION_URL", "postgresql://owner:password@db/orders"),
        ("DATABASE_MIGRATION_URL", "postgresql://my%40owner:my%40owner@db/orders"),
    ],
)
def test_a_default_or_self_named_password_is_refused_naming_the_variable(
    state: Path, monkeypatch: pytest.MonkeyPatch, variable: str, url: str
) -> None:
    monkeypatch.setenv(variable, url)
    with pytest.raises(ConfigurationError, match=f"{variable}: .*default or its user name"):
        load_settings()


def test_a_url_without_a_password_is_accepted(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No password: trust, peer or PGPASSFILE may authenticate it; nothing default to refuse."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://orders_app@db/orders")
    assert load_settings().database.url.hosts()[0]["password"] is None


def test_an_app_role_that_is_no_plain_identifier_is_refused(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_APP_ROLE", 'app"; DROP TABLE orders; --')
    with pytest.raises(ConfigurationError, match="DATABASE_APP_ROLE"):
        load_settings()

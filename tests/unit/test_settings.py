"""Configuration: defaults point at `make up`; a bad value names its variable."""

from __future__ import annotations

import pytest

from app.errors import ConfigurationError
from app.settings import load_settings


def test_defaults_point_at_the_local_services(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")  # no .env
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert str(settings.database.url).endswith("@127.0.0.1:5432/orders")
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

"""The database passwords stay out of what is printed or logged: the settings' repr and str
(a logged or printed Settings shows its database URLs with `***`), and the integration tests'
"no services" message. The URL itself, which the engine connects with, keeps its password."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import DatabaseSettings, Settings, load_settings
from tests.integration import endpoints

APP_PASSWORD = "app-Secret-4f9a"
OWNER_PASSWORD = "owner-Secret-77c1"
APP_URL = f"postgresql+asyncpg://orders_app:{APP_PASSWORD}@db.internal:5432/orders"
OWNER_URL = f"postgresql://orders_owner:{OWNER_PASSWORD}@db.internal:5432/orders"


def shown(value: object) -> list[str]:
    return [repr(value), str(value), f"{value}", f"{value!r}"]


def test_the_settings_never_show_a_database_password() -> None:
    database = DatabaseSettings(url=APP_URL, migration_url=OWNER_URL)  # type: ignore[arg-type]
    for text in shown(database) + shown(Settings(database=database)):
        assert APP_PASSWORD not in text
        assert OWNER_PASSWORD not in text
        assert "orders_app:***@db.internal:5432/orders" in text
        assert "orders_owner:***@db.internal:5432/orders" in text
    # What the engine and the migrations connect with is unchanged.
    assert str(database.url) == APP_URL
    assert str(database.owner_url) == OWNER_URL.replace("postgresql://", "postgresql+asyncpg://")


def test_settings_read_from_the_environment_do_not_show_it_either(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ORDERS_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", APP_URL)
    monkeypatch.delenv("DATABASE_MIGRATION_URL", raising=False)
    settings = load_settings()
    assert APP_PASSWORD in str(settings.database.url)
    assert not [text for text in shown(settings) if APP_PASSWORD in text]


def test_a_url_without_a_password_is_shown_as_it_is() -> None:
    database = DatabaseSettings(url="postgresql+asyncpg://orders_app@127.0.0.1:5432/orders")  # type: ignore[arg-type]
    assert "url='postgresql+asyncpg://orders_app@127.0.0.1:5432/orders'" in repr(database)


def test_the_no_services_message_of_the_integration_tests_hides_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = ("127.0.0.1:1", APP_URL, OWNER_URL, "the environment")
    monkeypatch.setattr(endpoints, "configured", lambda: found)
    monkeypatch.setattr(endpoints, "_kafka_answers", lambda _bootstrap: False)
    monkeypatch.setattr(endpoints, "_docker_available", lambda: False)
    with pytest.raises(RuntimeError) as failed, endpoints.real_services():
        pass
    message = str(failed.value)
    assert APP_PASSWORD not in message
    assert "orders_app:***@db.internal:5432/orders" in message

"""Fixtures over the real services: a fresh database per session, fresh topics per test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_engine
from app.db.migrate import upgrade_database
from app.settings import (
    ApiSettings,
    DatabaseSettings,
    KafkaSettings,
    Settings,
    WorkerSettings,
)
from app.topics import ensure_topics
from tests.integration.endpoints import Endpoints, real_services

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def endpoints() -> Iterator[Endpoints]:
    try:
        with real_services() as found:
            yield found
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
async def database_url(endpoints: Endpoints) -> AsyncIterator[str]:
    """A database of its own for this test session, migrated with the app's migrations."""
    name = f"orders_test_{uuid.uuid4().hex[:10]}"
    admin_url = _with_database(endpoints.database_url, "postgres").replace("+asyncpg", "")
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = _with_database(endpoints.database_url, name)
    # Alembic's env.py runs its own event loop: give it a thread of its own.
    await asyncio.to_thread(upgrade_database, DatabaseSettings(url=url))  # type: ignore[arg-type]
    yield url
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def make_settings(endpoints: Endpoints, database_url: str, **worker: object) -> Settings:
    """Settings for one scenario: its own topics and consumer group, the session's database."""
    run = uuid.uuid4().hex[:8]
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=endpoints.kafka_bootstrap,
            orders_topic=f"orders-{run}",
            dlq_topic=f"orders-{run}.DLQ",
        ),
        database=DatabaseSettings(url=database_url),  # type: ignore[arg-type]
        api=ApiSettings(ack_deadline_s=3.0),
        worker=WorkerSettings(group_id=f"order-workers-{run}", **worker),  # type: ignore[arg-type]
    )


@pytest.fixture
async def settings(endpoints: Endpoints, database_url: str) -> Settings:
    """Fresh topics (created through the app's own bootstrap) and a fresh group id."""
    fresh = make_settings(endpoints, database_url)
    await ensure_topics(fresh.kafka)
    return fresh


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(DatabaseSettings(url=database_url))  # type: ignore[arg-type]
    yield engine
    await engine.dispose()


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:8]

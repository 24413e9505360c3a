"""Fixtures over the real services: a fresh database per session, fresh topics per test."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_engine
from app.db.migrate import upgrade_database
from app.operations.kafka_clients import admin_client
from app.settings import (
    ApiSettings,
    AuthSettings,
    DatabaseSettings,
    KafkaSettings,
    Settings,
    WorkerSettings,
    state_dir,
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
    """A database of its own for this test session, as the application's role (DML only).

    The schema's owner creates it (CREATEDB) and migrates it; every test, API and worker then
    connects as the application's role, so the whole suite proves the app needs no more."""
    name = f"orders_test_{uuid.uuid4().hex[:10]}"
    admin_url = _with_database(endpoints.migration_url, "postgres").replace("+asyncpg", "")
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = _with_database(endpoints.database_url, name)
    owner_url = _with_database(endpoints.migration_url, name)
    # Alembic's env.py runs its own event loop: give it a thread of its own.
    await asyncio.to_thread(
        upgrade_database,
        DatabaseSettings(url=url, migration_url=owner_url),  # type: ignore[arg-type]
    )
    yield url
    # The owner may end the app role's leftover sessions (it is a member of that role).
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


# One signing key for every test session, apart from the developer's own (`make run`'s).
TEST_SIGNING_KEY = (state_dir() / "tests" / "auth" / "local-signing-key.pem").resolve()


@pytest.fixture(scope="session")
def migration_url(endpoints: Endpoints, database_url: str) -> str:
    """The session's database as its owner: for the few tests that change the schema (DDL)."""
    return _with_database(endpoints.migration_url, urlsplit(database_url).path.lstrip("/"))


def make_settings(endpoints: Endpoints, database_url: str, **worker: object) -> Settings:
    """Settings for one scenario: its own topics and consumer group, the session's database,
    authentication on with the tests' local key (tests/integration/api_client.py mints)."""
    run = uuid.uuid4().hex[:8]
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=endpoints.kafka_bootstrap,
            orders_topic=f"orders-{run}",
            dlq_topic=f"orders-{run}.DLQ",
        ),
        database=DatabaseSettings(url=database_url),  # type: ignore[arg-type]
        # No per-client rate limit (customers' or services'): every test client is the same
        # service, placing orders far faster than one client may; the rate limit's own tests
        # set theirs (test_authorization.py runs the defaults).
        api=ApiSettings(ack_deadline_s=3.0, rate_limit_per_s=0, service_rate_limit_per_s=0),
        worker=WorkerSettings(group_id=f"order-workers-{run}", **worker),  # type: ignore[arg-type]
        auth=AuthSettings(local_key_file=TEST_SIGNING_KEY),
    )


@pytest.fixture
async def settings(endpoints: Endpoints, database_url: str) -> AsyncIterator[Settings]:
    """Fresh topics (created through the app's own bootstrap) and a fresh group id; the topics
    are deleted afterwards (a long-lived local broker otherwise gathers thousands of
    partitions: 12,000 of them once ran its 512 MiB heap out of memory)."""
    fresh = make_settings(endpoints, database_url)
    await ensure_topics(fresh.kafka)
    yield fresh
    await _delete_topics(fresh.kafka, [fresh.kafka.orders_topic, fresh.kafka.dlq_topic])


async def _delete_topics(kafka: KafkaSettings, topics: list[str]) -> None:
    with contextlib.suppress(Exception):  # best effort: a test may have stopped its broker
        async with admin_client(kafka) as admin:
            await asyncio.wait_for(admin.delete_topics(topics), 10)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(DatabaseSettings(url=database_url))  # type: ignore[arg-type]
    yield engine
    await engine.dispose()


@pytest.fixture
async def owner_engine(migration_url: str) -> AsyncIterator[AsyncEngine]:
    """The schema owner's engine (DDL): the app's role may not ALTER a table."""
    engine = create_engine(DatabaseSettings(url=migration_url))  # type: ignore[arg-type]
    yield engine
    await engine.dispose()


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:8]

"""Where the real Kafka broker and PostgreSQL server come from, in this order:

1. KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL (+ DATABASE_MIGRATION_URL) from the environment (CI
   and `make test` may set them);
2. the state folder's services.env, where `make up` wrote the URLs of the services it started
   (ORDERS_STATE_DIR, else ./.state; the app's own settings read the same file);
3. testcontainers, where a Docker engine is available (PostgreSQL initialised with the same
   roles script as compose, and the owner given CREATEDB as `make up` gives it);
otherwise every integration test fails (never skips) with a message that says how to start them.

PostgreSQL comes as two URLs: the application's role (DML only), which every test and process
uses, and the schema owner's, which creates the session's database and migrates it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from dotenv import dotenv_values

from app.settings import local_services_env

DEFAULT_KAFKA = "127.0.0.1:9092"
POSTGRES_INIT = Path(__file__).resolve().parents[2] / "docker" / "postgres-init"
ROLES_SQL = POSTGRES_INIT / "10-orders-roles.sql"
HOW_TO_START = (
    "the integration tests need a real Kafka broker and PostgreSQL server: run `make up` "
    "(or `make test`, which starts them), or set KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL and "
    "DATABASE_MIGRATION_URL"
)


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    database_url: str  # the application's role: DML only
    origin: str
    # The schema owner's (DDL, CREATEDB); "" where a scenario only swaps the broker.
    migration_url: str = ""


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _kafka_answers(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return _answers(host, int(port))


def without_password(url: str) -> str:
    """`url` fit for a message: its password, if any, masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _database_answers(url: str) -> bool:
    parts = urlsplit(url)
    return _answers(parts.hostname or "127.0.0.1", parts.port or 5432)


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
    except Exception:
        return False
    return True


def configured() -> tuple[str, str, str, str] | None:
    """(kafka, app URL, owner URL, where from), from the environment or else services.env."""
    local = {key: value or "" for key, value in dotenv_values(local_services_env()).items()}
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or local.get("KAFKA_BOOTSTRAP_SERVERS")
    if "DATABASE_URL" in os.environ:
        app = os.environ["DATABASE_URL"]
        owner = os.environ.get("DATABASE_MIGRATION_URL", app)
        origin = "the environment"
    elif "DATABASE_URL" in local:
        app = local["DATABASE_URL"]
        owner = local.get("DATABASE_MIGRATION_URL", app)
        origin = f"{local_services_env()} (`make up`)"
    else:
        return None
    return kafka or DEFAULT_KAFKA, app, owner, origin


@contextmanager
def real_services() -> Iterator[Endpoints]:
    found = configured()
    if found is not None:
        kafka, app, owner, origin = found
        if _kafka_answers(kafka) and _database_answers(app):
            yield Endpoints(kafka, app, origin, owner)
            return
    if not _docker_available():
        where = f" (nothing answers at {found[0]} / {without_password(found[1])})" if found else ""
        raise RuntimeError(f"{HOW_TO_START}{where}")
    with _containers() as started:
        yield started


@contextmanager
def _containers() -> Iterator[Endpoints]:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    owner_password, app_password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    postgres = (
        PostgresContainer(
            "postgres:17", username="postgres", password=secrets.token_urlsafe(24), dbname="orders"
        )
        .with_env("POSTGRES_INITDB_ARGS", "--auth-host=scram-sha-256")
        .with_env("ORDERS_DB_OWNER_PASSWORD", owner_password)
        .with_env("ORDERS_DB_APP_PASSWORD", app_password)
        # The roles script alone: the folder's pg_hba rule refuses the superuser over TCP, and
        # testcontainers waits for the server by logging in as it over TCP.
        .with_volume_mapping(ROLES_SQL, f"/docker-entrypoint-initdb.d/{ROLES_SQL.name}", "ro")
    )
    with ExitStack() as stack:
        broker = stack.enter_context(KafkaContainer("apache/kafka:4.1.1").with_kraft())
        server = stack.enter_context(postgres)
        # The owner creates the session's database; only local setups give it CREATEDB.
        granted = server.exec(
            ["psql", "-U", "postgres", "-d", "orders", "-c", "ALTER ROLE orders_owner CREATEDB"]
        )
        if granted.exit_code != 0:
            raise RuntimeError(f"CREATEDB for orders_owner failed: {granted.output!r}")
        where = f"{server.get_container_host_ip()}:{server.get_exposed_port(5432)}/orders"
        yield Endpoints(
            broker.get_bootstrap_server(),
            f"postgresql+asyncpg://orders_app:{app_password}@{where}",
            "testcontainers",
            f"postgresql+asyncpg://orders_owner:{owner_password}@{where}",
        )

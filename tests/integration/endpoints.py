"""Where the real Kafka broker and PostgreSQL server come from, in this order:

1. KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL from the environment (CI sets them, `make test` too);
2. the defaults, when `make up` has started the local services;
3. testcontainers, where a Docker engine is available;
otherwise every integration test fails (never skips) with a message that says how to start them.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_KAFKA = "127.0.0.1:9092"
DEFAULT_DATABASE = "postgresql+asyncpg://orders:orders@127.0.0.1:5432/orders"
HOW_TO_START = (
    "the integration tests need a real Kafka broker and PostgreSQL server: run `make up` "
    "(or `make test`, which starts them), or set KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL"
)


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    database_url: str
    origin: str


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _kafka_answers(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return _answers(host, int(port))


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


@contextmanager
def real_services() -> Iterator[Endpoints]:
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_KAFKA)
    database = os.environ.get("DATABASE_URL", DEFAULT_DATABASE)
    if _kafka_answers(kafka) and _database_answers(database):
        yield Endpoints(kafka, database, "environment or `make up`")
        return
    if not _docker_available():
        raise RuntimeError(f"{HOW_TO_START} (nothing answers at {kafka} / {database})")
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    with ExitStack() as stack:
        broker = stack.enter_context(KafkaContainer("apache/kafka:4.1.1").with_kraft())
        server = stack.enter_context(PostgresContainer("postgres:17", driver="asyncpg"))
        yield Endpoints(
            broker.get_bootstrap_server(), server.get_connection_url(), "testcontainers"
        )

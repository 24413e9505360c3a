"""Least privilege in PostgreSQL: what the application's role may not do, what the owner may.

That the application's role may do everything the pipeline needs is proved by the rest of the
suite, which runs on it (tests/integration/conftest.py `database_url`). A server of this
module's own (started by `make up`'s code) shows what only a superuser can set up: `make up`
converging quietly, and compose's init script refusing the superuser over TCP.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from app.db.migrate import downgrade_database, upgrade_database
from app.settings import DatabaseSettings
from tests.integration.endpoints import POSTGRES_INIT, Endpoints
from tests.integration.live_stack import free_port
from tests.integration.throwaway import ThrowawayPostgres, throwaway_postgres

# What the application's role may do to each table, and nothing more (migrations/versions/0003;
# 0005: DELETE on consumer_positions, for `orders offsets delete`; 0008: intake).
EXPECTED_PRIVILEGES = {
    "orders": {"SELECT", "INSERT"},
    "skipped_offsets": {"SELECT", "INSERT"},
    "consumer_positions": {"SELECT", "INSERT", "UPDATE", "DELETE"},
    "quarantined_records": {"SELECT", "INSERT", "UPDATE"},
    "idempotency_keys": {"SELECT", "INSERT", "UPDATE", "DELETE"},
    # `orders lab semantics` (migrations/versions/0004): deliveries are never updated.
    "lab_deliveries": {"SELECT", "INSERT", "DELETE"},
    "lab_positions": {"SELECT", "INSERT", "UPDATE", "DELETE"},
    # `orders analytics` (migrations/versions/0006): DELETE for the lab's own runs' rows.
    "revenue_windows": {"SELECT", "INSERT", "UPDATE", "DELETE"},
    "analytics_watermarks": {"SELECT", "INSERT", "UPDATE", "DELETE"},
    # `orders payments` (migrations/versions/0007): the audit trail is append-only.
    "payment_attempts": {"SELECT", "INSERT"},
    # `orders topics grow` (migrations/versions/0008): the API reads the state FOR SHARE (which
    # needs UPDATE) and heartbeats; the grow pauses and resumes; nothing deletes a state.
    "intake_state": {"SELECT", "INSERT", "UPDATE"},
    "intake_members": {"SELECT", "INSERT", "UPDATE", "DELETE"},
    "alembic_version": set(),
}
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")

REFUSED_TO_THE_APP = [
    "CREATE TABLE intruder (x int)",
    "CREATE TABLE public.intruder (x int)",
    "CREATE TEMP TABLE intruder (x int)",
    "CREATE VIEW intruder AS SELECT 1 AS x",
    "CREATE FUNCTION intruder() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE SCHEMA intruder",
    "CREATE INDEX intruder ON orders (currency)",
    "ALTER TABLE orders ADD COLUMN intruder int",
    "ALTER TABLE orders DROP CONSTRAINT ck_orders_sequence_positive",
    "DROP TABLE orders",
    "TRUNCATE orders",
    "TRUNCATE idempotency_keys",
    "DELETE FROM orders",
    "UPDATE orders SET total = 0",
    "UPDATE alembic_version SET version_num = '0001'",
    "UPDATE payment_attempts SET outcome = 'charged'",
    "DELETE FROM payment_attempts",
    "DELETE FROM intake_state",
    "SELECT version_num FROM alembic_version",
    "CREATE DATABASE intruder",
    "CREATE ROLE intruder",
    "ALTER ROLE CURRENT_USER CREATEDB",
]


def plain(url: str) -> str:
    """asyncpg takes postgresql://, not SQLAlchemy's postgresql+asyncpg://."""
    return url.replace("+asyncpg", "", 1)


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def with_credentials(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


def role_of(url: str) -> str:
    return urlsplit(url).username or ""


@pytest.fixture
async def as_app(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(plain(database_url))
    yield connection
    await connection.close()


async def test_the_app_role_has_no_role_attribute_beyond_login(
    as_app: asyncpg.Connection,
) -> None:
    row = await as_app.fetchrow(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin"
        " FROM pg_roles WHERE rolname = current_user"
    )
    assert row is not None
    assert dict(row) == {
        "rolsuper": False,
        "rolcreatedb": False,
        "rolcreaterole": False,
        "rolreplication": False,
        "rolbypassrls": False,
        "rolcanlogin": True,
    }


async def test_the_app_role_has_exactly_its_table_privileges(as_app: asyncpg.Connection) -> None:
    granted = {
        table: {
            privilege
            for privilege in TABLE_PRIVILEGES
            if await as_app.fetchval(
                "SELECT has_table_privilege(current_user, $1, $2)", f"public.{table}", privilege
            )
        }
        for table in EXPECTED_PRIVILEGES
    }
    assert granted == EXPECTED_PRIVILEGES
    tables = {row["tablename"] for row in await as_app.fetch("SELECT tablename FROM pg_tables")}
    assert set(EXPECTED_PRIVILEGES) <= tables
    # Nor may it create anything in the schema or the database, or make temporary tables.
    assert not await as_app.fetchval("SELECT has_schema_privilege('public', 'CREATE')")
    assert not await as_app.fetchval(
        "SELECT has_database_privilege(current_database(), 'CREATE, TEMPORARY')"
    )


@pytest.mark.parametrize("statement", REFUSED_TO_THE_APP)
async def test_the_app_role_is_refused(as_app: asyncpg.Connection, statement: str) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_app.execute(statement)


async def test_the_owner_owns_the_schema_it_migrated(
    as_app: asyncpg.Connection, endpoints: Endpoints
) -> None:
    owners = await as_app.fetch(
        "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
    )
    assert [row["tableowner"] for row in owners] == [role_of(endpoints.migration_url)]
    assert role_of(endpoints.migration_url) != role_of(endpoints.database_url)


@pytest.fixture
async def spare_database(endpoints: Endpoints) -> AsyncIterator[DatabaseSettings]:
    """An empty database the owner creates (it has CREATEDB), for migrations of its own."""
    name = f"orders_roles_{uuid.uuid4().hex[:10]}"
    admin_url = plain(with_database(endpoints.migration_url, "postgres"))
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield DatabaseSettings(
        url=with_database(endpoints.database_url, name),  # type: ignore[arg-type]
        migration_url=with_database(endpoints.migration_url, name),  # type: ignore[arg-type]
    )
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _app_may(settings: DatabaseSettings, statement: str) -> bool:
    connection = await asyncpg.connect(plain(str(settings.url)))
    try:
        await connection.execute(statement)
    except asyncpg.InsufficientPrivilegeError:
        return False
    finally:
        await connection.close()
    return True


async def test_the_grants_are_a_reversible_migration(spare_database: DatabaseSettings) -> None:
    await asyncio.to_thread(upgrade_database, spare_database)
    assert await _app_may(spare_database, "SELECT count(*) FROM orders")

    await asyncio.to_thread(downgrade_database, spare_database, "0002")
    assert not await _app_may(spare_database, "SELECT count(*) FROM orders")
    assert not await _app_may(spare_database, "SELECT count(*) FROM idempotency_keys")

    await asyncio.to_thread(upgrade_database, spare_database)
    assert await _app_may(spare_database, "SELECT count(*) FROM orders")
    assert await _app_may(spare_database, "DELETE FROM idempotency_keys")
    assert not await _app_may(spare_database, "DELETE FROM orders")

    # 0005 alone: the operator's group delete, and its revocation.
    assert await _app_may(spare_database, "DELETE FROM consumer_positions")
    await asyncio.to_thread(downgrade_database, spare_database, "0004")
    assert not await _app_may(spare_database, "DELETE FROM consumer_positions")
    assert await _app_may(spare_database, "UPDATE consumer_positions SET owner = owner")


async def test_a_table_the_owner_adds_later_is_the_apps_to_read_and_write(
    spare_database: DatabaseSettings,
) -> None:
    await asyncio.to_thread(upgrade_database, spare_database)
    owner = await asyncpg.connect(plain(str(spare_database.owner_url)))
    try:
        await owner.execute("CREATE TABLE later (id bigint GENERATED ALWAYS AS IDENTITY, x int)")
    finally:
        await owner.close()
    for statement in (
        "INSERT INTO later (x) VALUES (1)",
        "UPDATE later SET x = 2",
        "SELECT x FROM later",
        "DELETE FROM later",
    ):
        assert await _app_may(spare_database, statement), statement
    assert not await _app_may(spare_database, "TRUNCATE later")
    assert not await _app_may(spare_database, "DROP TABLE later")


@pytest.mark.parametrize("who", ["app", "owner", "postgres", "orders"])
async def test_a_wrong_password_over_tcp_is_refused(endpoints: Endpoints, who: str) -> None:
    """Also the bootstrap superuser's conventional names, with the passwords of old defaults."""
    user = {
        "app": role_of(endpoints.database_url),
        "owner": role_of(endpoints.migration_url),
    }.get(who, who)
    for password in ("wrong", user, "orders", "postgres"):
        url = with_credentials(plain(endpoints.database_url), user, password)
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(url)


def _authentication_asked(host: str, port: int, user: str, database: str) -> tuple[int, bytes]:
    """The server's first answer to a StartupMessage (protocol 3.0): its authentication request
    code (10: SASL) and the request's body (for SASL, the mechanisms it offers)."""
    parameters = f"user\0{user}\0database\0{database}\0\0".encode()
    startup = struct.pack("!ii", 8 + len(parameters), 196608) + parameters
    with socket.create_connection((host, port), timeout=5) as connection:
        connection.sendall(startup)
        header = connection.recv(5, socket.MSG_WAITALL)
        kind, length = header[:1], struct.unpack("!i", header[1:])[0]
        body = connection.recv(length - 4, socket.MSG_WAITALL)
    assert kind == b"R", f"expected an authentication request, got {kind!r}: {body!r}"
    return struct.unpack("!i", body[:4])[0], body[4:]


@pytest.mark.parametrize("who", ["app", "owner", "postgres"])
def test_tcp_authentication_is_scram_sha_256(endpoints: Endpoints, who: str) -> None:
    """Not trust, not md5, not a cleartext password: SCRAM-SHA-256, for every role."""
    parts = urlsplit(endpoints.database_url)
    user = {
        "app": role_of(endpoints.database_url),
        "owner": role_of(endpoints.migration_url),
    }.get(who, who)
    code, body = _authentication_asked(
        parts.hostname or "127.0.0.1", parts.port or 5432, user, parts.path.lstrip("/")
    )
    assert code == 10, f"{user}: authentication request {code}, not SASL"
    assert b"SCRAM-SHA-256" in body.split(b"\0"), body


async def test_passwords_are_stored_as_scram_verifiers(as_app: asyncpg.Connection) -> None:
    assert await as_app.fetchval("SHOW password_encryption") == "scram-sha-256"


# --- what `make up` and compose set up as the superuser, on a server of this module's own ---


@pytest.fixture(scope="module")
def own_server() -> Iterator[ThrowawayPostgres]:
    with throwaway_postgres(free_port()) as server:
        yield server


def test_make_up_converges_again_without_a_notice(
    own_server: ThrowawayPostgres, capfd: pytest.CaptureFixture[str]
) -> None:
    """Every `make up` runs the roles script again: on roles that are all there already, it
    has nothing to say (psql prints a server NOTICE even with -q)."""
    capfd.readouterr()
    own_server.start()
    out, err = capfd.readouterr()
    assert "NOTICE" not in out + err, out + err


async def test_only_make_ups_owner_may_create_databases(own_server: ThrowawayPostgres) -> None:
    """CREATEDB comes from scripts/local_services/postgres.py (the tests' own databases), not
    from the roles script compose runs (tests/unit/test_compose.py checks that side)."""
    owner = await asyncpg.connect(plain(own_server.migration_url))
    try:
        attributes = await owner.fetchrow(
            "SELECT rolcreatedb, rolsuper, pg_has_role('orders_app', 'MEMBER') AS may_end_app"
            " FROM pg_roles WHERE rolname = current_user"
        )
        await owner.execute('CREATE DATABASE "orders_owner_may"')
        await owner.execute('DROP DATABASE "orders_owner_may"')
    finally:
        await owner.close()
    assert dict(attributes or {}) == {"rolcreatedb": True, "rolsuper": False, "may_end_app": True}


def apply_compose_init_hba(server: ThrowawayPostgres) -> None:
    """docker/postgres-init/00-superuser-local-only.sh on the server's pg_hba.conf, reloaded."""
    services, data = server.services, server.home / "data"
    subprocess.run(
        ["bash", str(POSTGRES_INIT / "00-superuser-local-only.sh")],
        env={"PATH": os.environ["PATH"], "PGDATA": str(data)},
        check=True,
    )
    pg_ctl = [*services.as_pg_user(), services.pg_bin("pg_ctl"), "-D", str(data)]
    subprocess.run([*pg_ctl, "reload"], check=True, capture_output=True)


def pg_isready(server: ThrowawayPostgres) -> subprocess.CompletedProcess[str]:
    """The compose healthcheck's probe: pg_isready over TCP as the superuser."""
    where = ["-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "-d", "orders"]
    return subprocess.run(
        [server.services.pg_bin("pg_isready"), *where], capture_output=True, text=True, check=False
    )


async def test_the_compose_init_refuses_the_superuser_over_tcp(
    own_server: ThrowawayPostgres,
) -> None:
    """The init script, applied to this server's pg_hba.conf: a TCP login as `postgres` is
    rejected before any password is asked for, the healthcheck's pg_isready still reports the
    server ready, and the app's roles still log in."""
    superuser = with_credentials(plain(own_server.url), "postgres", "any-password")
    with pytest.raises(asyncpg.InvalidPasswordError):  # before: asked for a password
        await asyncpg.connect(superuser)

    await asyncio.to_thread(apply_compose_init_hba, own_server)
    await asyncio.sleep(0.5)  # the postmaster rereads pg_hba.conf on SIGHUP

    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match=r"pg_hba\.conf"):
        await asyncpg.connect(superuser)
    ready = await asyncio.to_thread(pg_isready, own_server)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    for url in (own_server.url, own_server.migration_url):
        connection = await asyncpg.connect(plain(url))
        await connection.close()

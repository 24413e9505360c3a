"""PostgreSQL: a cluster of the Debian (or PATH) server binaries, on loopback, least privilege.

Two roles, defined once in docker/postgres-init/10-orders-roles.sql (compose runs the same file):
`orders_owner` owns the database and runs the migrations, `orders_app` is what the API and the
workers connect as. Here alone the owner may also create databases (CREATEDB): the integration
tests, `make fuzz` and `make bench-worker` make databases of their own; compose's owner may not.
Their passwords are random and given by the caller (`make up` keeps them in
<state>/services.env). Over TCP every role authenticates with scram-sha-256. The bootstrap
superuser has no password at all: it is reached only over the server's Unix socket, in a folder
only the server's OS user may enter (`trust` there, and nowhere else).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .processes import ROOT, STATE, ServiceError, require_port_free, say

DATABASE = "orders"
OWNER_ROLE, APP_ROLE = "orders_owner", "orders_app"
ROLES_SQL = ROOT / "docker" / "postgres-init" / "10-orders-roles.sql"
# The bootstrap superuser's name is kept beside the cluster. Clusters initialised before it was
# (by an older `make up`) have the superuser `orders`, whose TCP password was `orders`.
SUPERUSER, LEGACY_SUPERUSER = "postgres", "orders"


@dataclass(frozen=True)
class RolePasswords:
    owner: str
    app: str

    @classmethod
    def generate(cls) -> RolePasswords:
        return cls(secrets.token_urlsafe(24), secrets.token_urlsafe(24))


@dataclass(frozen=True)
class DatabaseUrls:
    app: str  # DATABASE_URL: the application's role, DML only
    owner: str  # DATABASE_MIGRATION_URL: the schema's owner, for `orders migrate`


def pg_bin(tool: str) -> str:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if candidates:
        return str(candidates[-1])
    found = shutil.which(tool)
    if not found:
        raise ServiceError("PostgreSQL server binaries are missing (apt-get install postgresql)")
    return found


def as_pg_user() -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its tools as the `postgres` user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
    return ["runuser", "-u", "postgres", "--"]


def pg_state_root() -> Path:
    """Where PostgreSQL's folders go: the state folder, unless its own user cannot reach it.

    As root, the server runs as `postgres`, which cannot enter a checkout under a private home
    folder (/root is 0700): then a folder under /var/lib, named after this checkout, is used.
    """
    STATE.mkdir(parents=True, exist_ok=True)
    runner = as_pg_user()
    reachable_by_postgres = not runner or (
        subprocess.run([*runner, "test", "-x", str(STATE)], check=False).returncode == 0
    )
    if reachable_by_postgres:
        return STATE
    fallback = Path("/var/lib/orders-local") / hashlib.sha256(str(ROOT).encode()).hexdigest()[:10]
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def kept_passwords(services_env: dict[str, str]) -> RolePasswords:
    """The passwords of an earlier `make up` (in its URLs), else new random ones."""
    app = urlsplit(services_env.get("DATABASE_URL", ""))
    owner = urlsplit(services_env.get("DATABASE_MIGRATION_URL", ""))
    if (app.username, owner.username) == (APP_ROLE, OWNER_ROLE) and app.password and owner.password:
        return RolePasswords(owner=unquote(owner.password), app=unquote(app.password))
    return RolePasswords.generate()


def database_urls(port: int, passwords: RolePasswords) -> DatabaseUrls:
    where = f"127.0.0.1:{port}/{DATABASE}"
    return DatabaseUrls(
        app=f"postgresql+asyncpg://{APP_ROLE}:{passwords.app}@{where}",
        owner=f"postgresql+asyncpg://{OWNER_ROLE}:{passwords.owner}@{where}",
    )


def postgres_up(
    port: int, home: Path | None = None, passwords: RolePasswords | None = None
) -> DatabaseUrls:
    """Start (or find running) a PostgreSQL server with database `orders` and the two roles,
    whose passwords are set to `passwords` (random ones when not given); return their URLs."""
    home = home or pg_state_root() / "postgres"
    passwords = passwords or RolePasswords.generate()
    data = home / "data"
    sockets = home / "run"
    log = home / "postgres.log"
    runner = as_pg_user()
    home.mkdir(parents=True, exist_ok=True)
    sockets.mkdir(exist_ok=True)
    # The socket is the superuser's only way in (trust): only the server's OS user may reach it.
    sockets.chmod(0o700)
    if runner:
        shutil.chown(home, "postgres")
        shutil.chown(sockets, "postgres")
        probe = subprocess.run([*runner, "test", "-w", str(home)], check=False)
        if probe.returncode != 0:
            raise ServiceError(
                f"the postgres user cannot reach {home}; set ORDERS_STATE_DIR to a "
                "folder every user can traverse"
            )
    if not (data / "PG_VERSION").exists():
        _initdb(data, runner)
        (home / "superuser").write_text(SUPERUSER)
    status = subprocess.run(
        [*runner, pg_bin("pg_ctl"), "-D", str(data), "status"], capture_output=True, check=False
    )
    if status.returncode != 0:
        require_port_free(port, "PostgreSQL")
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} "
            "-c unix_socket_permissions=0700 -c password_encryption=scram-sha-256 "
            "-c max_connections=200 -c shared_buffers=256MB"
        )
        subprocess.run(
            [
                *runner,
                pg_bin("pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    else:
        port = _running_port(data)
    _converge(_superuser_psql(home, port, runner), passwords)
    say(f"PostgreSQL ready at 127.0.0.1:{port}, roles {OWNER_ROLE} and {APP_ROLE} (log: {log})")
    return database_urls(port, passwords)


def _running_port(data: Path) -> int:
    """The port a running server listens on (line 4 of postmaster.pid), whatever was asked."""
    return int((data / "postmaster.pid").read_text().splitlines()[3])


def _initdb(data: Path, runner: list[str]) -> None:
    say("initialising a PostgreSQL cluster")
    subprocess.run(
        [
            *runner,
            pg_bin("initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            # No --pwfile: the superuser has no password, so no TCP login can ever succeed as it.
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _superuser_psql(home: Path, port: int, runner: list[str]) -> list[str]:
    marker = home / "superuser"
    superuser = marker.read_text().strip() if marker.exists() else LEGACY_SUPERUSER
    return [
        *runner,
        pg_bin("psql"),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        str(home / "run"),
        "-p",
        str(port),
        "-U",
        superuser,
    ]


def _converge(psql: list[str], passwords: RolePasswords) -> None:
    """Database `orders`, both roles with these passwords, no TCP login for the superuser: the
    same end state whether the cluster is new, from an older `make up`, or already converged."""
    query = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"
    exists = subprocess.run(
        [*psql, "-d", "postgres", "-tAc", query],
        capture_output=True,
        text=True,
        check=True,
    )
    if exists.stdout.strip() != "1":
        subprocess.run([*psql, "-d", "postgres", "-c", f"CREATE DATABASE {DATABASE}"], check=True)
    # The script goes on stdin: as root, psql runs as `postgres`, which may not read the checkout.
    # One transaction, CREATEDB included: a test creating its database meanwhile never finds the
    # owner without it (the script spells out NOCREATEDB, for compose).
    subprocess.run(
        [*psql, "-d", DATABASE, "--single-transaction", "-f", "-"],
        input=f"{ROLES_SQL.read_text()}\nALTER ROLE {OWNER_ROLE} CREATEDB;\n",
        text=True,
        env={
            **os.environ,
            "ORDERS_DB_OWNER_PASSWORD": passwords.owner,
            "ORDERS_DB_APP_PASSWORD": passwords.app,
        },
        check=True,
        stdout=subprocess.DEVNULL,
    )
    # An older cluster's superuser `orders` had the TCP password `orders`: take it away.
    subprocess.run(
        [*psql, "-d", "postgres", "-c", "ALTER ROLE CURRENT_USER PASSWORD NULL"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def postgres_down(home: Path | None = None) -> None:
    data = (home or pg_state_root() / "postgres") / "data"
    if not (data / "PG_VERSION").exists():
        return
    runner = as_pg_user()
    status = subprocess.run(
        [*runner, pg_bin("pg_ctl"), "-D", str(data), "status"], capture_output=True, check=False
    )
    if status.returncode == 0:
        say("stopping PostgreSQL")
        subprocess.run(
            [*runner, pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            check=True,
            stdout=subprocess.DEVNULL,
        )

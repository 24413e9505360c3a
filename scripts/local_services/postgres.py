"""PostgreSQL: a cluster of the Debian (or PATH) server binaries, on loopback."""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from .processes import ROOT, STATE, ServiceError, require_port_free, say

PG_USER = PG_PASSWORD = PG_DATABASE = "orders"


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


def postgres_up(port: int, home: Path | None = None) -> str:
    """Start (or find running) a PostgreSQL server with database `orders`; return its URL."""
    home = home or pg_state_root() / "postgres"
    data = home / "data"
    sockets = home / "run"
    log = home / "postgres.log"
    url = f"postgresql+asyncpg://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}/{PG_DATABASE}"
    runner = as_pg_user()
    home.mkdir(parents=True, exist_ok=True)
    sockets.mkdir(exist_ok=True)
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
        say("initialising a PostgreSQL cluster")
        password_file = home / "pwfile"
        password_file.write_text(PG_PASSWORD)
        if runner:
            shutil.chown(password_file, "postgres")
        subprocess.run(
            [
                *runner,
                pg_bin("initdb"),
                "-D",
                str(data),
                "-U",
                PG_USER,
                f"--pwfile={password_file}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        password_file.unlink()
    status = subprocess.run(
        [*runner, pg_bin("pg_ctl"), "-D", str(data), "status"], capture_output=True, check=False
    )
    if status.returncode != 0:
        require_port_free(port, "PostgreSQL")
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} "
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
    env = {**os.environ, "PGPASSWORD": PG_PASSWORD}
    exists = subprocess.run(
        [
            pg_bin("psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            PG_USER,
            "-d",
            "postgres",
            "-tAc",
            f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    if exists.stdout.strip() != "1":
        subprocess.run(
            [pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, PG_DATABASE],
            env=env,
            check=True,
        )
    say(f"PostgreSQL ready at 127.0.0.1:{port} (log: {log})")
    return url


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

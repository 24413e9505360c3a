#!/usr/bin/env python3
"""`make fuzz`: schemathesis, every check, against a live API and two workers.

The stack is the real one: `orders api` and two `orders worker` processes on the real broker and
PostgreSQL, but on topics, a consumer group and a database of this run's own (`*-fuzz-<run>`),
so `make test` and `make run` never see what the fuzzer produced. They are made first, removed
at the end, and every process started here is stopped (SIGTERM, then SIGKILL) whatever happens.

Every request carries one service's bearer token (both scopes, minted with `orders token` from
the local key the API verifies with), so generated data reaches validation; schemathesis'
`ignored_auth` check sends requests without it, and with a made-up one, and expects 401. There
is no per-client rate limit in this run (API_RATE_LIMIT_PER_S=0, API_SERVICE_RATE_LIMIT_PER_S=0):
the fuzzer is one client sending far faster than one client may, and a 429 would hide what the
data does.

Passing means both:
1. `schemathesis run --checks all`: every generated request, valid or not, gets an answer that
   its OpenAPI entry describes (status, content type, headers, body), valid data is accepted
   and invalid data refused. scripts/fuzz_hooks.py says what it adds, and why;
2. the pipeline stored what the API accepted: the workers drain the topic, and nothing went
   to the dead-letter topic or the quarantine (issue 10: a 202 must never jam a worker).

Checks that find nothing to check here, on purpose (schemathesis runs them; they pass vacuously):
- object_level_authorization: it needs two users' credentials configured; the matrix in
  tests/integration/test_authorization.py checks a customer's token against another's orders;
- use_after_free: it has no DELETE;
- the stateful phase: it follows links; the schema declares none, and schemathesis infers the
  one there is (POST /orders' Location -> GET /orders/{order_id}) from the responses.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from sqlalchemy import text
from stop_processes import stop_processes

from app.db.engine import create_engine
from app.operations.kafka_clients import admin_client, offsets_consumer, topic_partitions
from app.operations.lag import group_lag
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
READY_TIMEOUT_S = 90
DRAIN_TIMEOUT_S = 120


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-examples", type=int, default=50, help="per operation and phase")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=None, help="to replay a run")
    args = parser.parse_args()

    run = secrets.token_hex(4)
    base = Settings()
    database = _with_database(str(base.database.url), f"orders_fuzz_{run}")
    # The schema's owner creates and migrates the run's database; the API and workers use the
    # application's role (DML only).
    owner = _with_database(str(base.database.owner_url), f"orders_fuzz_{run}")
    port = _free_port()
    env = {
        **os.environ,
        "KAFKA_ORDERS_TOPIC": f"orders-fuzz-{run}",
        "KAFKA_DLQ_TOPIC": f"orders-fuzz-{run}.DLQ",
        "WORKER_GROUP_ID": f"order-workers-fuzz-{run}",
        "DATABASE_URL": database,
        "DATABASE_MIGRATION_URL": owner,
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "API_RATE_LIMIT_PER_S": "0",
        "API_SERVICE_RATE_LIMIT_PER_S": "0",
        "AUTH_ENABLED": "true",
    }
    # Absolute: the API and `orders token` must read one key, whatever their working folder.
    env["AUTH_LOCAL_KEY_FILE"] = str(_settings_from(env).auth.local_key_file.resolve())
    settings = _settings_from(env)
    logs = ROOT / ".state" / "fuzz" / run
    logs.mkdir(parents=True, exist_ok=True)
    print(f"fuzz run {run}: topic {settings.kafka.orders_topic}, logs in {logs}", flush=True)

    processes: list[subprocess.Popen[bytes]] = []
    asyncio.run(_create_database(base, database))
    try:
        subprocess.run([BIN / "orders", "migrate"], env=env, check=True)
        processes.append(_start("api", env, logs))
        processes += [_start(f"worker-{n}", env, logs) for n in range(1, args.workers + 1)]
        _wait_ready(f"http://127.0.0.1:{port}/readyz", processes)
        fuzzed = _schemathesis(f"http://127.0.0.1:{port}", args, env, logs)
        drained = asyncio.run(_drained(settings))
    finally:
        codes = stop_processes(processes)
        asyncio.run(_remove(base, settings, database))
    stopped = all(code in (0, -signal.SIGTERM) for code in codes)
    if not stopped:
        print(f"a process did not stop cleanly (exit codes {codes}); see {logs}", file=sys.stderr)
    print(f"fuzz: schemathesis {'passed' if fuzzed == 0 else 'FAILED'}, pipeline {drained}")
    if fuzzed == 0 and drained == "drained" and stopped:
        shutil.rmtree(logs)
        return 0
    print(f"fuzz: the logs, schemathesis' JUnit report and cache are in {logs}")
    return 1


def _schemathesis(url: str, args: argparse.Namespace, env: dict[str, str], logs: Path) -> int:
    command = [
        str(BIN / "schemathesis"),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(args.max_examples),
        "--workers",
        "1",
        "--request-timeout",
        "15",
        "--report",
        "junit",
        "--report-dir",
        str(logs),
        "--no-color",
    ]
    if args.seed is not None:
        command += ["--seed", str(args.seed)]
    token = _service_token(env)
    command += ["--header", f"Authorization: Bearer {token}"]
    hooks = {
        "SCHEMATHESIS_HOOKS": str(ROOT / "scripts" / "fuzz_hooks.py"),
        "FUZZ_API": url,
        "FUZZ_TOKEN": token,
    }
    # Run in the logs folder: schemathesis keeps a cache (.schemathesis/) in its working folder.
    return subprocess.run(command, env={**env, **hooks}, cwd=logs, check=False).returncode


def _service_token(env: dict[str, str]) -> str:
    """A service's token (no customer: it may place orders for any), valid for 8 hours."""
    command = [BIN / "orders", "token", "--subject", "fuzz", "--ttl", "28800"]
    command += ["--scope", "orders:write", "--scope", "orders:read"]
    minted = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return minted.stdout.strip()


async def _drained(settings: Settings) -> str:
    """Whether the workers stored everything on the topic, and nothing was set aside."""
    engine = create_engine(settings.database)
    try:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while sum(p.lag for p in await group_lag(settings, engine)) > 0:
            if time.monotonic() > deadline:
                return f"NOT DRAINED after {DRAIN_TIMEOUT_S}s (see `orders lag`)"
            await asyncio.sleep(0.5)
        async with engine.connect() as connection:
            stored = await connection.scalar(text("SELECT count(*) FROM orders"))
            quarantined = await connection.scalar(text("SELECT count(*) FROM quarantined_records"))
        async with offsets_consumer(settings.kafka) as consumer:
            partitions = await topic_partitions(settings.kafka, consumer, settings.kafka.dlq_topic)
            dead = sum((await consumer.end_offsets(partitions)).values())
    finally:
        await engine.dispose()
    print(f"pipeline: {stored} orders stored, {dead} dead letters, {quarantined} quarantined")
    return "drained" if dead == 0 and quarantined == 0 else "SET RECORDS ASIDE"


def _start(name: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    command = "api" if name == "api" else "worker"
    if command == "worker":
        # Each worker would take WORKER_METRICS_PORT (9100) for its /metrics; the fuzz run
        # reads none of them, and two cannot share the port.
        env = {**env, "WORKER_METRICS_PORT": "0"}
    with (logs / f"{name}.log").open("wb") as log:
        # A session of its own: a Ctrl-C at the terminal reaches this script, which stops them.
        return subprocess.Popen(
            [BIN / "orders", command],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _wait_ready(url: str, processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            raise SystemExit("a process of the stack exited while starting; see its log")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"the API was not ready within {READY_TIMEOUT_S}s")


def _settings_from(env: dict[str, str]) -> Settings:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def _admin_url(base: Settings) -> str:
    return _with_database(str(base.database.owner_url), "postgres").replace("+asyncpg", "")


async def _create_database(base: Settings, url: str) -> None:
    admin = await asyncpg.connect(_admin_url(base))
    try:
        await admin.execute(f'CREATE DATABASE "{urlsplit(url).path[1:]}"')
    finally:
        await admin.close()


async def _remove(base: Settings, settings: Settings, url: str) -> None:
    """Drop this run's database and topics (their consumer group's offsets go with them)."""
    try:
        admin = await asyncpg.connect(_admin_url(base))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path[1:]}" WITH (FORCE)')
        finally:
            await admin.close()
        async with admin_client(settings.kafka) as kafka:
            topics = [settings.kafka.orders_topic, settings.kafka.dlq_topic]
            existing = set(await kafka.list_topics())
            await kafka.delete_topics([topic for topic in topics if topic in existing])
    except Exception as exc:  # do not hide why the run failed; say what is left
        print(f"fuzz: could not remove this run's database or topics: {exc!r}", file=sys.stderr)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


if __name__ == "__main__":
    sys.exit(main())

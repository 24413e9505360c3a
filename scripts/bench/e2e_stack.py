"""`make bench-e2e`'s stack: a configuration (API processes x workers) started on a topic,
a consumer group and a database of its own, and all of it removed at the end."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from worker import drop_database, free_port, plain  # scripts/bench/worker.py

from app.operations.kafka_clients import admin_client
from app.settings import KafkaSettings, Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/, beside scripts/bench/
from stop_processes import stop_processes  # scripts/stop_processes.py

ORDERS = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "orders")
READY_TIMEOUT_S = 60


@dataclass(frozen=True)
class Config:
    api_processes: int
    workers: int

    @property
    def name(self) -> str:
        return f"{self.api_processes}x{self.workers}"


def parse_configs(text: str) -> list[Config]:
    configs = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)x(\d+)\s*", item)
        if not match or 0 in (int(match.group(1)), int(match.group(2))):
            msg = f"configuration {item!r}: expected API_PROCESSESxWORKERS, e.g. 1x2"
            raise SystemExit(msg)
        configs.append(Config(int(match.group(1)), int(match.group(2))))
    return configs


def api_supports_workers() -> bool:
    shown = subprocess.run([ORDERS, "api", "--help"], capture_output=True, text=True, check=False)
    return "--workers" in shown.stdout


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        # A session of its own: a Ctrl-C reaches this script, which stops them in order.
        return subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def wait_ready(urls: list[str], processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = list(urls)
    while pending:
        if any(p.poll() is not None for p in processes):
            msg = "a process of the stack exited while starting; see its log"
            raise SystemExit(msg)
        if time.monotonic() > deadline:
            msg = f"not ready within {READY_TIMEOUT_S}s: {pending}"
            raise SystemExit(msg)
        try:
            with urllib.request.urlopen(pending[0], timeout=2) as response:
                if response.status == 200:
                    pending.pop(0)
                    continue
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)


@dataclass
class Stack:
    config: Config
    run: str
    settings: Settings
    logs: Path

    def __post_init__(self) -> None:
        suffix = f"{self.run}-{self.config.name}"
        self.topic = f"orders-e2e-{suffix}"
        self.group = f"order-workers-e2e-{suffix}"
        self.database = f"orders_e2e_{suffix.replace('-', '_')}"
        self.kafka: KafkaSettings = self.settings.kafka.model_copy(
            update={"orders_topic": self.topic, "dlq_topic": f"{self.topic}.DLQ"}
        )
        self.owner_url = plain(str(self.settings.database.owner_url)).rsplit("/", 1)[0]
        self.owner_url += f"/{self.database}"
        self.processes: list[subprocess.Popen[bytes]] = []

    def env(self, url: str) -> dict[str, str]:
        env = {
            **os.environ,
            "KAFKA_ORDERS_TOPIC": self.topic,
            "KAFKA_DLQ_TOPIC": self.kafka.dlq_topic,
            "WORKER_GROUP_ID": self.group,
            "DATABASE_URL": url,
            "LOG_LEVEL": "WARNING",
            # One generator sends everything: a per-client rate limit would measure itself.
            "API_RATE_LIMIT_PER_S": "0",
            "API_SERVICE_RATE_LIMIT_PER_S": "0",
            "AUTH_ENABLED": "true",
            "AUTH_LOCAL_KEY_FILE": str(self.settings.auth.local_key_file.resolve()),
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return env

    def start(self, url: str) -> tuple[int, subprocess.Popen[bytes], list[subprocess.Popen[bytes]]]:
        env = self.env(url)
        port = free_port()
        api_command = [ORDERS, "api", "--port", str(port)]
        if self.config.api_processes > 1:
            api_command += ["--workers", str(self.config.api_processes)]
        api = start(api_command, env, self.logs / f"{self.config.name}-api.log")
        self.processes.append(api)
        ready = [f"http://127.0.0.1:{port}/readyz"]
        workers = []
        for n in range(1, self.config.workers + 1):
            metrics_port = free_port()
            worker_env = {**env, "WORKER_METRICS_PORT": str(metrics_port)}
            log = self.logs / f"{self.config.name}-worker-{n}.log"
            workers.append(start([ORDERS, "worker"], worker_env, log))
            ready.append(f"http://127.0.0.1:{metrics_port}/readyz")
        self.processes += workers
        # Every worker ready: each has its assignment, so no rebalance falls into the run.
        wait_ready(ready, self.processes)
        return port, api, workers

    async def create(self) -> str:
        """The run's database, made by the schema's owner, and `orders migrate` on it and on the
        run's topics (the deployment's own step: schema, topics, the intake's registration);
        returns the application role's URL of the database."""
        admin = await asyncpg.connect(self.owner_url.rsplit("/", 1)[0] + "/postgres")
        try:
            await admin.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await admin.close()
        url = str(self.settings.database.url).rsplit("/", 1)[0] + f"/{self.database}"
        owner = str(self.settings.database.owner_url).rsplit("/", 1)[0] + f"/{self.database}"
        env = {**self.env(url), "DATABASE_MIGRATION_URL": owner}
        migrated = await asyncio.to_thread(
            subprocess.run, [ORDERS, "migrate"], env=env, capture_output=True, text=True
        )
        if migrated.returncode != 0:
            msg = f"orders migrate failed: {migrated.stderr}"
            raise SystemExit(msg)
        return url

    async def remove(self) -> None:
        """Stop every process started (SIGTERM, then SIGKILL), drop the database, delete the
        topics; a failure to remove is said, not raised (it must not hide the run's own)."""
        codes = await asyncio.to_thread(stop_processes, self.processes)
        if any(code not in (0, -15) for code in codes):
            print(f"a process did not stop cleanly ({codes}); see {self.logs}", file=sys.stderr)
        try:
            await drop_database(str(self.settings.database.owner_url), self.database)
            async with admin_client(self.kafka) as admin:
                existing = set(await admin.list_topics())
                mine = [self.topic, self.kafka.dlq_topic]
                await admin.delete_topics([topic for topic in mine if topic in existing])
        except Exception as exc:  # do not hide why the run failed; say what is left
            print(f"could not remove {self.database} or {self.topic}: {exc!r}", file=sys.stderr)

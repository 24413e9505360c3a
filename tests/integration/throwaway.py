"""Real services of a test's own, which the test may stop, kill and restart.

They are started by the same code as `make up` (scripts/services.py), on other ports, with their
state under .state/ (PostgreSQL's own user must be able to reach its data folder).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _services_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("services", ROOT / "scripts" / "services.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["services"] = module
    spec.loader.exec_module(module)
    return module


class ThrowawayBroker:
    """A real single-node Kafka (same jars as `make up`) on its own ports, for fault tests."""

    def __init__(self, home: Path, base_port: int) -> None:
        self.services = _services_module()
        self.home = home
        self.base_port = base_port
        self.bootstrap = f"127.0.0.1:{base_port}"

    def start(self) -> None:
        self.services.kafka_up(1, self.base_port, self.home)

    def stop(self, *, kill: bool = False) -> None:
        pid_file = self.services.kafka_node_home(self.home, 1) / "broker.pid"
        if kill:
            pid = self.services.pid_alive(pid_file)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                while self.services.pid_alive(pid_file):
                    time.sleep(0.05)
            pid_file.unlink(missing_ok=True)
        else:
            self.services.stop_pid(pid_file, "throwaway broker")


@contextmanager
def throwaway_broker(home: Path, base_port: int = 19192) -> Iterator[ThrowawayBroker]:
    broker = ThrowawayBroker(home, base_port)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop(kill=True)


class ThrowawayPostgres:
    def __init__(self, port: int) -> None:
        self.services = _services_module()
        self.port = port
        self.home = self.services.pg_state_root() / "test-postgres" / uuid.uuid4().hex[:8]
        self.url = ""

    def start(self) -> None:
        self.url = self.services.postgres_up(self.port, self.home)

    def stop(self) -> None:
        """An immediate shutdown: connections drop as if the server had crashed."""
        data = self.home / "data"
        subprocess.run(
            [
                *self.services.as_pg_user(),
                self.services.pg_bin("pg_ctl"),
                "-D",
                str(data),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            check=True,
            capture_output=True,
        )

    def remove(self) -> None:
        self.services.postgres_down(self.home)
        subprocess.run(["rm", "-rf", str(self.home)], check=False)


@contextmanager
def throwaway_postgres(port: int = 55432) -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres(port)
    server.start()
    try:
        yield server
    finally:
        server.remove()

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

from app.settings import DatabaseSettings

ROOT = Path(__file__).resolve().parents[2]


def _services_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("services", ROOT / "scripts" / "services.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["services"] = module
    spec.loader.exec_module(module)
    return module


class ThrowawayCluster:
    """Real Kafka nodes (same jars as `make up`, KRaft combined mode) on their own ports.

    `security="sasl_ssl"` secures them as `KAFKA_SECURITY=sasl_ssl make up` does, with the ACLs
    granted on the name prefixes `acl_prefixes` (orders topic, DLQ topic, group) rather than the
    settings' names, so that each scenario can use fresh names; the credentials are then in
    `credentials_file(principal)`.
    """

    def __init__(
        self,
        home: Path,
        base_port: int,
        brokers: int = 1,
        security: str = "plaintext",
        acl_prefixes: tuple[str, str, str] | None = None,
    ) -> None:
        self.services = _services_module()
        self.home = home
        self.base_port = base_port
        self.brokers = brokers
        self.security = security
        self.acl_prefixes = acl_prefixes
        self.bootstrap = ",".join(
            f"127.0.0.1:{self.services.kafka_ports(node, base_port)[0]}"
            for node in range(1, brokers + 1)
        )

    def start(self) -> None:
        """Start every node that is not running, and wait until all of them answer."""
        scope = (
            self.services.AclScope(*self.acl_prefixes, pattern="prefixed")
            if self.acl_prefixes
            else None
        )
        self.services.kafka_up(self.brokers, self.base_port, self.home, self.security, scope)

    def credentials_file(self, principal: str) -> Path:
        """A secured cluster's KAFKA_* variables for `principal` (written beside its folder)."""
        return self.home.parent / "credentials" / f"{principal}.env"

    def credentials(self, principal: str) -> dict[str, str]:
        """That file's KAFKA_* variables."""
        variables: dict[str, str] = self.services.read_credentials(self.credentials_file(principal))
        return variables

    def _pid_file(self, node: int) -> Path:
        return Path(self.services.kafka_node_home(self.home, node)) / "broker.pid"

    def kill(self, node: int = 1) -> None:
        """kill -9: no controlled shutdown, no flush."""
        pid_file = self._pid_file(node)
        pid = self.services.pid_alive(pid_file)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            while self.services.pid_alive(pid_file):
                time.sleep(0.05)
        pid_file.unlink(missing_ok=True)

    def stop(self, node: int = 1) -> None:
        """A clean shutdown (SIGTERM, controlled)."""
        self.services.stop_pid(self._pid_file(node), f"throwaway Kafka node {node}")

    def stop_all(self) -> None:
        for node in range(1, self.brokers + 1):
            self.kill(node)


@contextmanager
def throwaway_cluster(
    home: Path, base_port: int = 19192, brokers: int = 1
) -> Iterator[ThrowawayCluster]:
    cluster = ThrowawayCluster(home, base_port, brokers)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop_all()


class ThrowawayPostgres:
    """A server of its own, with the same roles as `make up`'s (random passwords): `url` is the
    application's role, `migration_url` the schema owner's; `settings` has both."""

    def __init__(self, port: int) -> None:
        self.services = _services_module()
        self.port = port
        self.home = self.services.pg_state_root() / "test-postgres" / uuid.uuid4().hex[:8]
        self.passwords = self.services.RolePasswords.generate()
        self.url = self.migration_url = ""

    @property
    def settings(self) -> DatabaseSettings:
        return DatabaseSettings(url=self.url, migration_url=self.migration_url)  # type: ignore[arg-type]

    def start(self) -> None:
        """Start it (again): the same passwords every time."""
        urls = self.services.postgres_up(self.port, self.home, self.passwords)
        self.url, self.migration_url = urls.app, urls.owner

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


# Below Linux's ephemeral range (32768-60999): the tests stop and restart these servers while
# clients keep reconnecting, and a client connecting to a port nobody listens on can be given
# that same port as its own (a TCP self-connect), which then keeps the server from binding it.
OUTAGE_POSTGRES_PORT = 25432


@contextmanager
def throwaway_postgres(port: int = OUTAGE_POSTGRES_PORT) -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres(port)
    server.start()
    try:
        yield server
    finally:
        server.remove()

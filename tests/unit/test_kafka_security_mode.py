"""Which security mode `make up`, `make migrate` and `make run` use against the local Kafka.

Our own cluster running on the Kafka port keeps its recorded mode: asked for the other one,
`scripts/services.py up` and `scripts/as_principal.py` fail and say so (no silent plaintext run
after `KAFKA_SECURITY=sasl_ssl make up`); asked for nothing, they follow it (so `make run` after
`KAFKA_SECURITY=sasl_ssl make up` gives each process its credentials). No broker is started:
a "running" node here is a pid file holding this test process's own pid.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from as_principal import principal_environment
from local_services.kafka import (
    LocalCluster,
    bootstrap_target,
    local_cluster_at,
    requested_security,
    running_clusters,
    settle_security,
)
from local_services.processes import ServiceError

ROOT = Path(__file__).resolve().parents[2]
DEAD_PID = 2**22 + 12345  # above Linux's largest pid: never a process


def fake_cluster(
    root: Path, folder: str, mode: str, broker_port: int, *, alive: bool = True
) -> Path:
    """A cluster folder as kafka_up leaves it: its mode, one node's listeners and pid file."""
    cluster = root / folder
    node = cluster / "node-1"
    node.mkdir(parents=True)
    (cluster / "security").write_text(mode)
    name = "BROKER" if mode == "sasl_ssl" else "PLAINTEXT"
    (node / "server.properties").write_text(
        "process.roles=broker,controller\n"
        f"listeners={name}://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{broker_port + 1}\n"
    )
    (node / "broker.pid").write_text(str(os.getpid() if alive else DEAD_PID))
    return cluster


def credentials(root: Path, principal: str, port: int) -> None:
    folder = root / "credentials"
    folder.mkdir(exist_ok=True)
    (folder / f"{principal}.env").write_text(
        f"# Kafka credentials of {principal}\n"
        f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port}\n"
        "KAFKA_SECURITY_PROTOCOL=SASL_SSL\n"
        f"KAFKA_SASL_USERNAME={principal}\n"
        "KAFKA_SASL_PASSWORD=its-password\n"
    )


PLAIN = LocalCluster(Path("/state/kafka/cluster-1"), "plaintext", frozenset({9092, 9093}))
SECURED = LocalCluster(Path("/state/kafka/cluster-1-sasl_ssl"), "sasl_ssl", frozenset({9092}))


@pytest.mark.parametrize(
    ("requested", "running", "mode"),
    [
        (None, None, "plaintext"),
        ("plaintext", None, "plaintext"),
        ("sasl_ssl", None, "sasl_ssl"),
        (None, PLAIN, "plaintext"),
        (None, SECURED, "sasl_ssl"),
        ("plaintext", PLAIN, "plaintext"),
        ("sasl_ssl", SECURED, "sasl_ssl"),
    ],
)
def test_the_running_cluster_decides_unless_nothing_runs(
    requested: str | None, running: LocalCluster | None, mode: str
) -> None:
    assert settle_security(requested, running, 9092) == mode


@pytest.mark.parametrize(("requested", "running"), [("sasl_ssl", PLAIN), ("plaintext", SECURED)])
def test_asking_for_the_other_mode_than_the_running_clusters_fails(
    requested: str, running: LocalCluster
) -> None:
    with pytest.raises(ServiceError) as refused:
        settle_security(requested, running, 9092)
    message = str(refused.value)
    assert f"the {running.mode} Kafka cluster runs on port 9092" in message
    assert "make down" in message
    assert f"KAFKA_SECURITY={requested}" in message


def test_kafka_security_is_checked_and_case_insensitive() -> None:
    assert requested_security(None) is None
    assert requested_security("") is None
    assert requested_security("SASL_SSL") == "sasl_ssl"
    with pytest.raises(ServiceError, match="KAFKA_SECURITY=tls"):
        requested_security("tls")


def test_our_running_clusters_are_found_with_their_mode_and_ports(tmp_path: Path) -> None:
    secured = fake_cluster(tmp_path, "cluster-1-sasl_ssl", "sasl_ssl", 19092)
    fake_cluster(tmp_path, "cluster-1", "plaintext", 29092, alive=False)
    assert running_clusters(tmp_path) == [
        LocalCluster(secured, "sasl_ssl", frozenset({19092, 19093}))
    ]
    assert local_cluster_at("127.0.0.1", 19092, tmp_path) == running_clusters(tmp_path)[0]
    assert local_cluster_at("127.0.0.1", 29092, tmp_path) is None  # stopped
    assert local_cluster_at("kafka.example", 19092, tmp_path) is None  # not ours
    assert bootstrap_target("127.0.0.1:19092,127.0.0.1:19094") == ("127.0.0.1", 19092)
    assert bootstrap_target(None) == ("127.0.0.1", 9092)


def test_make_run_after_a_secured_make_up_gets_the_credentials_without_being_told(
    tmp_path: Path,
) -> None:
    fake_cluster(tmp_path, "cluster-1-sasl_ssl", "sasl_ssl", 19092)
    credentials(tmp_path, "orders-api", 19092)
    environ = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:19092", "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    got = principal_environment("orders-api", environ, tmp_path)
    assert got["KAFKA_SASL_USERNAME"] == "orders-api"
    assert got["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert principal_environment("orders-api", {**environ, "KAFKA_SECURITY": "sasl_ssl"}, tmp_path)
    with pytest.raises(ServiceError, match="the sasl_ssl Kafka cluster runs on port 19092"):
        principal_environment("orders-api", {**environ, "KAFKA_SECURITY": "plaintext"}, tmp_path)


def test_a_plaintext_cluster_is_not_used_as_a_secured_one(tmp_path: Path) -> None:
    fake_cluster(tmp_path, "cluster-1", "plaintext", 19092)
    credentials(tmp_path, "orders-api", 19092)  # left over from an earlier secured run
    environ = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:19092"}
    assert principal_environment("orders-api", environ, tmp_path) == environ
    with pytest.raises(ServiceError, match="the plaintext Kafka cluster runs on port 19092"):
        principal_environment("orders-api", {**environ, "KAFKA_SECURITY": "sasl_ssl"}, tmp_path)


def test_with_nothing_running_kafka_security_alone_decides(tmp_path: Path) -> None:
    environ = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:19092"}
    assert principal_environment("orders-api", environ, tmp_path) == environ
    with pytest.raises(ServiceError, match="wrote no credentials for orders-api"):
        principal_environment("orders-api", {**environ, "KAFKA_SECURITY": "sasl_ssl"}, tmp_path)
    credentials(tmp_path, "orders-api", 19092)
    secured = principal_environment(
        "orders-api", {**environ, "KAFKA_SECURITY": "sasl_ssl"}, tmp_path
    )
    assert secured["KAFKA_SASL_PASSWORD"] == "its-password"


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port something answers on: `up` then starts nothing there, whatever it decides."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def services_up(state: Path, port: int, **variables: str) -> subprocess.CompletedProcess[str]:
    """`scripts/services.py up` as `make up` runs it, KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL
    exported (as from .env) and both pointing at `port`."""
    environment = {
        "PATH": os.environ["PATH"],
        "ORDERS_STATE_DIR": str(state),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "DATABASE_URL": f"postgresql+asyncpg://orders_app@127.0.0.1:{port}/orders",
        **variables,
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "services.py"), "up"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_make_up_refuses_to_pass_a_plaintext_cluster_off_as_secured(
    tmp_path: Path, listening_port: int
) -> None:
    fake_cluster(tmp_path / "kafka", "cluster-1", "plaintext", listening_port)
    refused = services_up(tmp_path, listening_port, KAFKA_SECURITY="sasl_ssl")
    assert refused.returncode == 1, refused.stdout
    assert f"the plaintext Kafka cluster runs on port {listening_port}" in refused.stderr
    assert "make down" in refused.stderr

    kept = services_up(tmp_path, listening_port)  # KAFKA_SECURITY unset: the running one's mode
    assert kept.returncode == 0, kept.stderr
    assert "points at our plaintext Kafka cluster" in kept.stdout

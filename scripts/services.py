#!/usr/bin/env python3
"""Start and stop the real services on loopback, without Docker.

    scripts/services.py up [--brokers 3]   Apache Kafka (KRaft, combined mode) and PostgreSQL
    scripts/services.py down               stop what `up` started (fine when nothing runs)
    scripts/services.py status

Standard library only: it runs before the project's virtualenv exists. Everything it starts lives
under the git-ignored state folder (`.state/`, or ORDERS_STATE_DIR). When KAFKA_BOOTSTRAP_SERVERS
or DATABASE_URL already point at reachable services, those are used and nothing is started.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("ORDERS_STATE_DIR", ROOT / ".state")).resolve()
KAFKA_POM = ROOT / "scripts" / "kafka" / "pom.xml"
KAFKA_LOG4J = ROOT / "scripts" / "kafka" / "log4j2.properties"
KAFKA_HEAP = os.environ.get("KAFKA_HEAP_OPTS", "-Xms256m -Xmx512m")
PG_USER = PG_PASSWORD = PG_DATABASE = "orders"
DEFAULT_KAFKA = "127.0.0.1:9092"
DEFAULT_DATABASE = "postgresql+asyncpg://orders:orders@127.0.0.1:5432/orders"


# Brokers this process started, kept so that when tests import this module, a running broker's
# Popen is never garbage-collected (and can be reaped once it exits).
_children: dict[int, subprocess.Popen[bytes]] = {}


class ServiceError(Exception):
    pass


def say(message: str) -> None:
    print(f"[services] {message}", flush=True)


# --- small helpers -----------------------------------------------------------------------------


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    # A process we started ourselves (tests import this module) lingers as a zombie until reaped.
    if pid in _children:
        return None if _children[pid].poll() is not None else pid
    return pid


def stop_pid(pid_file: Path, name: str, grace: float = 30.0) -> None:
    pid = pid_alive(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return
    say(f"stopping {name} (pid {pid})")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_alive(pid_file):
        time.sleep(0.2)
    if pid_alive(pid_file):
        say(f"{name} did not stop within {grace:.0f}s; killing it")
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def wait_until(check, what: str, timeout: float, log: Path | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    hint = f"; see {log}" if log else ""
    raise ServiceError(f"{what} did not become ready within {timeout:.0f}s{hint}")


def require_port_free(port: int, owner: str) -> None:
    if reachable("127.0.0.1", port):
        raise ServiceError(
            f"port {port} is taken by another process, so {owner} cannot start there; "
            "stop that process, or point the settings at it if it is the service you want"
        )


# --- Apache Kafka ------------------------------------------------------------------------------


def java() -> str:
    found = shutil.which("java")
    if not found:
        raise ServiceError(
            "Java is missing: the Kafka broker needs Java 17+ (make deps installs it)"
        )
    return found


def kafka_classpath() -> str:
    """The broker's jars, resolved from Maven Central once and cached by the pom's hash."""
    libs = STATE / "kafka" / "libs"
    stamp = STATE / "kafka" / "libs.sha256"
    wanted = hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()
    if not (stamp.exists() and stamp.read_text() == wanted and any(libs.glob("kafka_*.jar"))):
        mvn = shutil.which("mvn")
        if not mvn:
            raise ServiceError(
                "Maven is missing: it fetches the Kafka jars (apt-get install maven)"
            )
        say("resolving the Kafka broker jars from Maven Central (once)")
        shutil.rmtree(libs, ignore_errors=True)
        resolved = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(KAFKA_POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={libs}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if resolved.returncode != 0:
            raise ServiceError(f"Maven could not fetch the Kafka jars:\n{resolved.stdout}")
        stamp.write_text(wanted)
    return f"{libs}/*"


def kafka_ports(node: int, base: int) -> tuple[int, int]:
    """Broker and controller port of node 1..n: 9092/9093, 9094/9095, 9096/9097."""
    broker = base + 2 * (node - 1)
    return broker, broker + 1


def kafka_properties(node: int, brokers: int, base: int, data: Path) -> str:
    broker_port, controller_port = kafka_ports(node, base)
    voters = ",".join(f"{n}@127.0.0.1:{kafka_ports(n, base)[1]}" for n in range(1, brokers + 1))
    replication = min(brokers, 3)
    min_isr = 2 if brokers >= 3 else 1
    return "\n".join(
        [
            "process.roles=broker,controller",
            f"node.id={node}",
            f"controller.quorum.voters={voters}",
            f"listeners=PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{broker_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={data}",
            # The project creates its own topics (app/topics.py); a typo must not invent a topic.
            "auto.create.topics.enable=false",
            "unclean.leader.election.enable=false",
            f"offsets.topic.replication.factor={replication}",
            f"transaction.state.log.replication.factor={replication}",
            f"transaction.state.log.min.isr={min_isr}",
            f"default.replication.factor={replication}",
            f"min.insync.replicas={min_isr}",
            # Local runs: no 3 s wait before the first rebalance; fewer threads on a 2-core machine.
            "group.initial.rebalance.delay.ms=0",
            "num.network.threads=2",
            "num.io.threads=4",
            "",
        ]
    )


def kafka_node_home(cluster: Path, node: int) -> Path:
    return cluster / f"node-{node}"


def kafka_up(brokers: int, base: int, cluster: Path | None = None) -> str:
    """Start (or find running) a KRaft cluster of `brokers` combined nodes; wait until ready."""
    cluster = cluster or STATE / "kafka" / f"cluster-{brokers}"
    bootstrap = ",".join(f"127.0.0.1:{kafka_ports(n, base)[0]}" for n in range(1, brokers + 1))
    java_bin = java()
    classpath = kafka_classpath()
    cluster_file = cluster / "cluster.id"
    if not cluster_file.exists():
        cluster_file.parent.mkdir(parents=True, exist_ok=True)
        cluster_file.write_text(uuid.uuid4().hex[:22])
    cluster_id = cluster_file.read_text().strip()
    for node in range(1, brokers + 1):
        home = kafka_node_home(cluster, node)
        data = home / "data"
        pid_file = home / "broker.pid"
        if pid_alive(pid_file):
            continue
        broker_port, controller_port = kafka_ports(node, base)
        require_port_free(broker_port, f"Kafka node {node}")
        require_port_free(controller_port, f"Kafka controller {node}")
        home.mkdir(parents=True, exist_ok=True)
        config = home / "server.properties"
        config.write_text(kafka_properties(node, brokers, base, data))
        if not (data / "meta.properties").exists():
            say(f"formatting storage of Kafka node {node}")
            subprocess.run(
                [
                    java_bin,
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(config),
                    "--ignore-formatted",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        log = home / "broker.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [
                    java_bin,
                    *KAFKA_HEAP.split(),
                    "-XX:+UseG1GC",
                    f"-Dlog4j2.configurationFile={KAFKA_LOG4J}",
                    "-cp",
                    classpath,
                    "kafka.Kafka",
                    str(config),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        pid_file.write_text(str(process.pid))
        _children[process.pid] = process
        say(f"Kafka node {node} starting on 127.0.0.1:{broker_port} (log: {log})")
    for node in range(1, brokers + 1):
        broker_port, _ = kafka_ports(node, base)
        log = kafka_node_home(cluster, node) / "broker.log"
        wait_until(
            lambda p=broker_port: kafka_answers(java_bin, classpath, p),
            f"Kafka node {node}",
            120,
            log,
        )
    say(f"Kafka ready at {bootstrap}")
    return bootstrap


def kafka_answers(java_bin: str, classpath: str, port: int) -> bool:
    """True once the broker answers a metadata request (kafka-topics --list does one)."""
    if not reachable("127.0.0.1", port):
        return False
    result = subprocess.run(
        [
            java_bin,
            "-cp",
            classpath,
            "org.apache.kafka.tools.TopicCommand",
            "--bootstrap-server",
            f"127.0.0.1:{port}",
            "--list",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return result.returncode == 0


def kafka_down(root: Path | None = None) -> None:
    for pid_file in sorted((root or STATE / "kafka").glob("**/node-*/broker.pid")):
        stop_pid(pid_file, f"Kafka {pid_file.parent.parent.name}/{pid_file.parent.name}")


# --- PostgreSQL --------------------------------------------------------------------------------


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


# --- the commands ------------------------------------------------------------------------------


def external(variable: str, host_port: tuple[str, int] | None) -> bool:
    """True when the environment names a service that already answers: start nothing then."""
    if variable not in os.environ or host_port is None:
        return False
    if reachable(*host_port):
        say(f"{variable} points at a running service ({host_port[0]}:{host_port[1]}); using it")
        return True
    if host_port[0] not in {"127.0.0.1", "localhost"}:
        raise ServiceError(f"{variable} names {host_port[0]}:{host_port[1]}, which does not answer")
    return False


def kafka_target() -> tuple[str, int]:
    first = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_KAFKA).split(",")[0]
    host, _, port = first.rpartition(":")
    return host or "127.0.0.1", int(port)


def database_target() -> tuple[str, int]:
    parts = urlsplit(os.environ.get("DATABASE_URL", DEFAULT_DATABASE))
    return parts.hostname or "127.0.0.1", parts.port or 5432


def up(brokers: int) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    if not external("KAFKA_BOOTSTRAP_SERVERS", kafka_target()):
        kafka_up(brokers, kafka_target()[1])
    if not external("DATABASE_URL", database_target()):
        postgres_up(database_target()[1])


def down() -> None:
    kafka_down()
    postgres_down()


def status() -> None:
    for pid_file in sorted((STATE / "kafka").glob("**/node-*/broker.pid")):
        state = "running" if pid_alive(pid_file) else "stopped"
        say(f"kafka {pid_file.parent.parent.name}/{pid_file.parent.name}: {state}")
    data = pg_state_root() / "postgres" / "data"
    if (data / "PG_VERSION").exists():
        result = subprocess.run(
            [*as_pg_user(), pg_bin("pg_ctl"), "-D", str(data), "status"],
            capture_output=True,
            check=False,
        )
        say(f"postgres: {'running' if result.returncode == 0 else 'stopped'}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start Kafka and PostgreSQL (idempotent)")
    start.add_argument(
        "--brokers",
        type=int,
        default=int(os.environ.get("KAFKA_BROKERS", "1")),
        choices=(1, 3),
        help="1 (default) or 3 brokers on loopback",
    )
    commands.add_parser("down", help="stop them (fine when nothing runs)")
    commands.add_parser("status", help="what is running")
    args = parser.parse_args()
    try:
        if args.command == "up":
            up(args.brokers)
        elif args.command == "down":
            down()
        else:
            status()
    except ServiceError as exc:
        print(f"[services] error: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(
            f"[services] error: {' '.join(map(str, exc.cmd))} failed ({exc.returncode})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

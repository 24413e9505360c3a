#!/usr/bin/env python3
"""Start and stop the real services on loopback, without Docker.

    scripts/services.py up [--brokers 3]   Apache Kafka (KRaft, combined mode) and PostgreSQL
                        [--security sasl_ssl]  Kafka with TLS, SCRAM users and ACLs (default:
                                               KAFKA_SECURITY, else the running cluster's mode,
                                               else plaintext)
    scripts/services.py down               stop what `up` started (fine when nothing runs)
    scripts/services.py status

Standard library only: it runs before the project's virtualenv exists. Each service has a module
of its own in scripts/local_services/. Everything it starts lives under the git-ignored state
folder (`.state/`, or ORDERS_STATE_DIR). When KAFKA_BOOTSTRAP_SERVERS or DATABASE_URL already
point at reachable services, those are used and nothing is started; but when that Kafka is our
own local cluster in the other security mode than the one asked for, `up` fails and says so.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

# Run as a script (`python3 scripts/services.py`) or loaded by path from the tests: either way
# the package next to it must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_services.kafka import (
    TOOL_JVM,
    bootstrap_target,
    java,
    kafka_classpath,
    kafka_down,
    kafka_node_home,
    kafka_ports,
    kafka_up,
    local_cluster_at,
    requested_security,
    settle_security,
)
from local_services.kafka_security import SECURITY_MODES, AclScope, read_credentials
from local_services.postgres import (
    RolePasswords,
    as_pg_user,
    kept_passwords,
    pg_bin,
    pg_state_root,
    postgres_down,
    postgres_up,
)
from local_services.processes import STATE, ServiceError, pid_alive, reachable, say, stop_pid
from local_services.services_env import read_services_env, update_services_env

# What the integration tests' throwaway services use from here.
__all__ = [
    "TOOL_JVM",
    "AclScope",
    "RolePasswords",
    "as_pg_user",
    "java",
    "kafka_classpath",
    "kafka_node_home",
    "kafka_ports",
    "kafka_up",
    "pg_bin",
    "pg_state_root",
    "pid_alive",
    "postgres_down",
    "postgres_up",
    "read_credentials",
    "stop_pid",
]

DEFAULT_DATABASE = "postgresql+asyncpg://127.0.0.1:5432/orders"


def external(
    variable: str, host_port: tuple[str, int] | None, what: str = "a running service"
) -> bool:
    """True when the environment names a service that already answers: start nothing then."""
    if variable not in os.environ or host_port is None:
        return False
    if reachable(*host_port):
        say(f"{variable} points at {what} ({host_port[0]}:{host_port[1]}); using it")
        return True
    if host_port[0] not in {"127.0.0.1", "localhost"}:
        raise ServiceError(f"{variable} names {host_port[0]}:{host_port[1]}, which does not answer")
    return False


def kafka_target() -> tuple[str, int]:
    return bootstrap_target(os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))


def database_target() -> tuple[str, int]:
    # The environment's, else the one an earlier `make up` wrote (it may have used another port).
    kept = read_services_env().get("DATABASE_URL", DEFAULT_DATABASE)
    parts = urlsplit(os.environ.get("DATABASE_URL", kept))
    return parts.hostname or "127.0.0.1", parts.port or 5432


def up(brokers: int, requested: str | None) -> None:
    """`requested`: the security mode asked for (--security, KAFKA_SECURITY), None if none was;
    our own cluster running on the Kafka port keeps its mode, and must not be asked for another."""
    STATE.mkdir(parents=True, exist_ok=True)
    host, port = kafka_target()
    running = local_cluster_at(host, port)
    security = settle_security(requested, running, port)
    ours = f"our {running.mode} Kafka cluster in {running.folder}" if running else ""
    if not external("KAFKA_BOOTSTRAP_SERVERS", (host, port), ours or "a running service"):
        kafka_up(brokers, port, security=security)
    if not external("DATABASE_URL", database_target()):
        urls = postgres_up(database_target()[1], passwords=kept_passwords(read_services_env()))
        written = update_services_env(
            {"DATABASE_URL": urls.app, "DATABASE_MIGRATION_URL": urls.owner}
        )
        say(f"PostgreSQL credentials: {written} (the app reads it; mode 0600)")


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
    start.add_argument(
        "--security",
        choices=SECURITY_MODES,
        help="plaintext, or sasl_ssl: TLS, SCRAM-SHA-512 users and ACLs (credentials under "
        ".state/kafka/credentials/); default: KAFKA_SECURITY, else the mode of our cluster "
        "already running, else plaintext",
    )
    commands.add_parser("down", help="stop them (fine when nothing runs)")
    commands.add_parser("status", help="what is running")
    args = parser.parse_args()
    try:
        if args.command == "up":
            up(args.brokers, args.security or requested_security(os.environ.get("KAFKA_SECURITY")))
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

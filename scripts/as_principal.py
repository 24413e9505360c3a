#!/usr/bin/env python3
"""Run a command as one of the local secured broker's Kafka users.

    scripts/as_principal.py orders-operator .venv/bin/orders migrate

When the Kafka that KAFKA_BOOTSTRAP_SERVERS names (default 127.0.0.1:9092) is our own local
cluster started secured (`KAFKA_SECURITY=sasl_ssl make up`: its folder records the mode), the
command gets that user's KAFKA_* variables, which `make up` wrote beside the cluster under
`<state>/kafka/credentials/`; so `make run` or `make migrate` need not be told KAFKA_SECURITY
again. A plaintext cluster there: the command runs unchanged. KAFKA_SECURITY set to the other
mode than the running cluster's is an error; with no local cluster running, KAFKA_SECURITY
alone decides. Each process then connects as the principal the broker's ACLs expect of it:
orders-api, orders-worker or orders-operator. Standard library only, like scripts/services.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_services.kafka import (
    bootstrap_target,
    local_cluster_at,
    requested_security,
    settle_security,
)
from local_services.kafka_security import credentials_environment
from local_services.processes import STATE, ServiceError


def principal_environment(
    principal: str, environ: Mapping[str, str] | None = None, root: Path | None = None
) -> dict[str, str]:
    """`environ` (default os.environ), with `principal`'s Kafka credentials when the broker it
    points at is secured; `root`: the local clusters' folder (default `<state>/kafka`)."""
    environment = dict(os.environ if environ is None else environ)
    root = root or STATE / "kafka"
    host, port = bootstrap_target(environment.get("KAFKA_BOOTSTRAP_SERVERS"))
    running = local_cluster_at(host, port, root)
    requested = requested_security(environment.get("KAFKA_SECURITY"))
    if settle_security(requested, running, port) != "sasl_ssl":
        return environment
    credentials = credentials_environment(principal, running.folder.parent if running else root)
    if not credentials:
        raise ServiceError(
            f"the Kafka at {host}:{port} is secured, but `make up` wrote no credentials for "
            f"{principal}: run `KAFKA_SECURITY=sasl_ssl make up` first"
        )
    return {**environment, **credentials}


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    principal, command = sys.argv[1], sys.argv[2:]
    try:
        environment = principal_environment(principal)
    except ServiceError as exc:
        print(f"[as_principal] error: {exc}", file=sys.stderr)
        return 1
    os.execvpe(command[0], command, environment)  # replaces this process
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())

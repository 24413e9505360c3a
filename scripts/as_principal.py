#!/usr/bin/env python3
"""Run a command as one of the local secured broker's Kafka users.

    scripts/as_principal.py orders-operator .venv/bin/orders migrate

With `KAFKA_SECURITY=sasl_ssl` (the same variable that made `make up` start the broker secured),
the command gets that user's KAFKA_* variables, which `make up` wrote under
`<state>/kafka/credentials/`; otherwise it runs unchanged. Each process then connects as the
principal the broker's ACLs expect of it: orders-api, orders-worker or orders-operator.
Standard library only, like scripts/services.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_services.kafka_security import credentials_environment
from local_services.processes import ServiceError


def principal_environment(principal: str) -> dict[str, str]:
    """os.environ, with `principal`'s Kafka credentials when the local broker is secured."""
    if os.environ.get("KAFKA_SECURITY", "plaintext").lower() != "sasl_ssl":
        return dict(os.environ)
    credentials = credentials_environment(principal)
    if not credentials:
        raise ServiceError(
            f"KAFKA_SECURITY=sasl_ssl, but `make up` wrote no credentials for {principal}: "
            "run `KAFKA_SECURITY=sasl_ssl make up` first"
        )
    return {**os.environ, **credentials}


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

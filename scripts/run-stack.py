#!/usr/bin/env python3
"""`make run`: the API and N workers in the foreground; Ctrl-C stops them all cleanly.

Each process is a real `orders` command (the same ones compose runs); this script only starts
them, forwards their output, and on Ctrl-C sends SIGTERM and waits for each to drain and exit.
When the local broker is secured (`KAFKA_SECURITY=sasl_ssl`), the API and the workers connect
as their own Kafka users. It also prints a ready `curl` with a bearer token (a service's, both
scopes, 8 hours) signed by the local key the API verifies with (`orders token`, which creates
the key on first use).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from as_principal import principal_environment
from monitoring_tools import local_prometheus
from stop_processes import stop_processes

ORDERS = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "orders")
EXAMPLE_ORDER = (
    '{"customer_id":"c-1","items":[{"sku":"sku-1","quantity":2,"unit_price":"9.99"}],'
    '"currency":"EUR"}'
)


def try_it(base_url: str) -> str:
    """Lines to paste: a token in $TOKEN, then an order placed with it."""
    if os.environ.get("AUTH_ENABLED", "true").lower() in ("false", "0", "no", "off"):
        token_line = "  (AUTH_ENABLED=false: no token needed)\n"
        header = ""
    else:
        command = [ORDERS, "token", "--subject", "make-run", "--ttl", str(8 * 3600)]
        command += ["--scope", "orders:write", "--scope", "orders:read"]
        minted = subprocess.run(
            command,
            check=True,
            capture_output=True,
            text=True,
        )
        token_line = f"  export TOKEN={minted.stdout.strip()}\n"
        header = ' -H "Authorization: Bearer $TOKEN"'
    return (
        f"{token_line}  curl -sS {base_url}/orders{header} -H 'Content-Type: application/json' "
        f"-d {shlex.quote(EXAMPLE_ORDER)}\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--prometheus", type=Path, help="MONITORING=1: this Prometheus binary scrapes the stack"
    )
    args = parser.parse_args()
    host = os.environ.get("API_HOST", "127.0.0.1")
    port = os.environ.get("API_PORT", "8000")

    # Before the API starts: the first `orders token` creates the local key the API then reads.
    example = try_it(f"http://{host}:{port}")
    # Each process as its own Kafka user when the local broker is secured (scripts/as_principal.py).
    api_env = principal_environment("orders-api")
    worker_env = principal_environment("orders-worker")
    processes = [subprocess.Popen([ORDERS, "api"], env=api_env, start_new_session=True)]
    # Each worker its own metrics port (WORKER_METRICS_PORT + i): one host, one port each.
    base_port = int(os.environ.get("WORKER_METRICS_PORT", "9100"))
    ports = local_prometheus.worker_ports(args.workers, base_port)
    processes += [
        subprocess.Popen(
            [ORDERS, "worker"],
            env={**worker_env, "WORKER_METRICS_PORT": str(port)},
            start_new_session=True,
        )
        for port in ports
    ]
    monitoring = ""
    if args.prometheus:
        worker_host = os.environ.get("WORKER_METRICS_HOST", "127.0.0.1")
        workers = [local_prometheus.target(worker_host, p) for p in ports if p]
        api = local_prometheus.target(host, int(port))
        processes.append(local_prometheus.start(args.prometheus, api, workers))
        monitoring = (
            f"  Prometheus: http://{local_prometheus.LISTEN} (HTTP API: /api/v1/alerts, "
            "/api/v1/targets, /api/v1/query)\n"
        )
    print(
        f"\n  API:  http://{host}:{port}\n  docs: http://{host}:{port}/docs\n{monitoring}"
        f"  {args.workers} workers in group {os.environ.get('WORKER_GROUP_ID', 'order-workers')}"
        "\n  Ctrl-C stops everything (Kafka and PostgreSQL keep running: `make down`)\n"
        f"\n  Try it (a service token, both scopes, 8 hours):\n{example}",
        flush=True,
    )

    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(p.poll() is None for p in processes):
        time.sleep(0.2)
    codes = stop_processes(processes)
    print(f"stopped (exit codes: {codes})", flush=True)
    # uvicorn re-raises the SIGTERM it handled after a graceful shutdown: that is a clean exit.
    clean = all(code in (0, -signal.SIGTERM) for code in codes)
    return 0 if stopping and clean else 1


if __name__ == "__main__":
    sys.exit(main())

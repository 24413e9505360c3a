#!/usr/bin/env python3
"""`make run`: the API, N workers, the analytics and payments members and the simulated payment
gateway in the foreground; Ctrl-C stops them all cleanly.

Each process is a real `orders` command (the same ones compose runs); this script only starts
them, forwards their output, and on Ctrl-C sends SIGTERM and waits for each to drain and exit:
the gateway last, so that payments members finish the charges in flight against it. The gateway
runs only with payments members (it is theirs alone), and they start once it answers.
When the local broker is secured (`KAFKA_SECURITY=sasl_ssl`), each process connects as its own
Kafka user (orders-api, orders-worker, orders-analytics, orders-payments). It also prints a
ready `curl` with a bearer token (a service's, both scopes, 8 hours) signed by the local key the
API verifies with (`orders token`, which creates the key on first use).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from as_principal import principal_environment
from monitoring_tools import local_prometheus
from stop_processes import stop_processes

ORDERS = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "orders")
EXAMPLE_ORDER = (
    '{"customer_id":"c-1","items":[{"sku":"sku-1","quantity":2,"unit_price":"9.99"}],'
    '"currency":"EUR"}'
)
GATEWAY_READY_S = 30
# `ANALYTICS=0 PAYMENTS=0 make run` puts these in the environment: pydantic-settings would read
# them as the `analytics` and `payments` settings groups themselves, so children never see them.
LAUNCHER_VARIABLES = ("WORKERS", "ANALYTICS", "PAYMENTS", "MONITORING")


def try_it(base_url: str, analytics: bool) -> str:
    """Lines to paste: a token in $TOKEN, then an order placed with it (and, with analytics
    members, today's revenue windows: served once a window has closed)."""
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
    lines = (
        f"{token_line}  curl -sS {base_url}/orders{header} -H 'Content-Type: application/json' "
        f"-d {shlex.quote(EXAMPLE_ORDER)}\n"
    )
    if analytics:
        today = datetime.now(UTC).date()
        span = f"from={today}T00:00:00Z&to={today + timedelta(days=1)}T00:00:00Z"
        lines += f"  curl -sS '{base_url}/analytics/revenue?{span}'{header}\n"
    return lines


def wait_for_gateway(gateway: subprocess.Popen[bytes], url: str) -> None:
    """Until the gateway answers GET /stats (its compose healthcheck too); bounded."""
    deadline = time.monotonic() + GATEWAY_READY_S
    while gateway.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/stats", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    state = "exited" if gateway.poll() is not None else f"did not answer in {GATEWAY_READY_S}s"
    raise SystemExit(f"run-stack: the payment gateway at {url} {state}")


def member_lines(args: argparse.Namespace, gateway_url: str) -> str:
    """The banner's lines for the analytics and payments members and the gateway."""
    lines = ""
    if args.analytics:
        group = os.environ.get("ANALYTICS_GROUP_ID", "order-analytics")
        mode = os.environ.get("ANALYTICS_MODE", "exact")
        lines += f"  {args.analytics} analytics members in group {group} (ANALYTICS_MODE={mode})\n"
    if args.payments:
        group = os.environ.get("PAYMENTS_GROUP_ID", "order-payments")
        topic = os.environ.get("PAYMENTS_TOPIC", "payments")
        lines += (
            f"  {args.payments} payments members in group {group}, writing topic {topic}\n"
            f"  payment gateway (simulated): {gateway_url} (GET /stats)\n"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--api-workers",
        type=int,
        default=int(os.environ.get("API_WORKERS") or 1),
        help="API processes on the API's port (`orders api --workers N`; default API_WORKERS, 1)",
    )
    parser.add_argument("--analytics", type=int, default=1, help="`orders analytics` members")
    parser.add_argument(
        "--payments", type=int, default=1, help="`orders payments` members (0: no gateway either)"
    )
    parser.add_argument(
        "--prometheus", type=Path, help="MONITORING=1: this Prometheus binary scrapes the stack"
    )
    args = parser.parse_args()
    host = os.environ.get("API_HOST", "127.0.0.1")
    port = os.environ.get("API_PORT", "8000")
    gateway_host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
    gateway_url = f"http://{gateway_host}:{os.environ.get('GATEWAY_PORT', '8300')}"
    for variable in LAUNCHER_VARIABLES:
        os.environ.pop(variable, None)

    # Before the API starts: the first `orders token` creates the local key the API then reads.
    example = try_it(f"http://{host}:{port}", args.analytics > 0)
    # Each process as its own Kafka user when the local broker is secured (scripts/as_principal.py).
    api_env = principal_environment("orders-api")
    worker_env = principal_environment("orders-worker")
    api_command = [ORDERS, "api", "--workers", str(args.api_workers)]
    processes = [subprocess.Popen(api_command, env=api_env, start_new_session=True)]
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
    analytics_env = principal_environment("orders-analytics")
    processes += [
        subprocess.Popen([ORDERS, "analytics"], env=analytics_env, start_new_session=True)
        for _ in range(args.analytics)
    ]
    # The gateway needs no Kafka user and no database: it holds none of their credentials.
    gateway: list[subprocess.Popen[bytes]] = []
    if args.payments:
        gateway_env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("KAFKA_SASL", "DATABASE_"))
        }
        gateway.append(
            subprocess.Popen([ORDERS, "gateway"], env=gateway_env, start_new_session=True)
        )
        try:
            wait_for_gateway(gateway[0], gateway_url)
        except SystemExit:
            stop_processes([*processes, *gateway])
            raise
        # The gateway this script started, whatever PAYMENTS_GATEWAY_URL says.
        payments_env = {
            **principal_environment("orders-payments"),
            "PAYMENTS_GATEWAY_URL": gateway_url,
        }
        processes += [
            subprocess.Popen([ORDERS, "payments"], env=payments_env, start_new_session=True)
            for _ in range(args.payments)
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
        f"\n  API:  http://{host}:{port} ({args.api_workers} process"
        f"{'es' if args.api_workers > 1 else ''})\n  docs: http://{host}:{port}/docs\n{monitoring}"
        f"  {args.workers} workers in group {os.environ.get('WORKER_GROUP_ID', 'order-workers')}\n"
        f"{member_lines(args, gateway_url)}"
        "  Ctrl-C stops everything (Kafka and PostgreSQL keep running: `make down`)\n"
        f"\n  Try it (a service token, both scopes, 8 hours):\n{example}",
        flush=True,
    )

    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    everything = [*processes, *gateway]
    while not stopping and all(p.poll() is None for p in everything):
        time.sleep(0.2)
    # The gateway last: payments members drain (finish their charges, commit) against it.
    codes = stop_processes(processes) + stop_processes(gateway)
    print(f"stopped (exit codes: {codes})", flush=True)
    # uvicorn re-raises the SIGTERM it handled after a graceful shutdown: that is a clean exit.
    clean = all(code in (0, -signal.SIGTERM) for code in codes)
    return 0 if stopping and clean else 1


if __name__ == "__main__":
    sys.exit(main())

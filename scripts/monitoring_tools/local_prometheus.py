#!/usr/bin/env python3
"""A real Prometheus for `MONITORING=1 make run`, scraping the local API and each worker.

`make prometheus` builds the binary from the Go module proxy; scripts/run-stack.py calls
`start()` with the API's address and the workers' metrics ports (worker i: WORKER_METRICS_PORT
+ i), and this writes the config (<state>/prometheus/prometheus.yml: the same jobs and rules as
compose's monitoring/prometheus/prometheus.yml, static loopback targets instead of DNS) and
keeps the data under <state>/prometheus/data.

    scripts/monitoring_tools/local_prometheus.py --workers 2 --output FILE   # the config alone

(`make lint` writes one that way and runs `promtool check config` on it.) A plain `go install`
of Prometheus has no web UI assets; its HTTP API answers: /api/v1/targets, /api/v1/alerts,
/api/v1/query?query=... Standard library only: run-stack.py runs before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "prometheus" / "rules"
LISTEN = "127.0.0.1:9090"
# The interval of compose's config; the rules' `for:` timings assume it (orders-alerts.yml).
INTERVAL = "10s"


def state_folder() -> Path:
    state = Path(os.environ.get("ORDERS_STATE_DIR", ROOT / ".state")).resolve()
    return state / "prometheus"


def worker_ports(workers: int, base: int) -> list[int]:
    """Worker i's metrics port: base + i; 0 (no metrics server) stays 0 for all."""
    return [base + i if base else 0 for i in range(workers)]


def target(host: str, port: int) -> str:
    """Where to scrape a process listening on host:port (all interfaces: loopback)."""
    return f"{'127.0.0.1' if host in ('', '0.0.0.0', '::') else host}:{port}"


def config(api: str, workers: Sequence[str]) -> dict[str, object]:
    """Prometheus' configuration: the jobs `orders-api` and `orders-worker` of the rules."""
    scrape_configs: list[dict[str, object]] = [
        {"job_name": "orders-api", "static_configs": [{"targets": [api]}]},
    ]
    if workers:
        scrape_configs.append(
            {"job_name": "orders-worker", "static_configs": [{"targets": list(workers)}]}
        )
    return {
        "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL},
        "rule_files": [str(RULES / "*.yml")],
        "scrape_configs": scrape_configs,
    }


def write_config(path: Path, api: str, workers: Sequence[str]) -> Path:
    """JSON is YAML: no YAML library needed, and Prometheus reads it as its YAML config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config(api, workers), indent=2) + "\n")
    return path


def start(binary: Path, api: str, workers: Sequence[str]) -> subprocess.Popen[bytes]:
    """Prometheus in its own session (Ctrl-C reaches it through run-stack.py's SIGTERM)."""
    folder = state_folder()
    settings = write_config(folder / "prometheus.yml", api, workers)
    command = [
        str(binary),
        f"--config.file={settings}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address={LISTEN}",
        "--log.level=warn",
    ]
    return subprocess.Popen(command, start_new_session=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--api", default="127.0.0.1:8000")
    parser.add_argument("--base-port", type=int, default=9100)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    ports = worker_ports(args.workers, args.base_port)
    workers = [f"127.0.0.1:{port}" for port in ports if port]
    write_config(args.output, args.api, workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""`make run`: the API and N workers in the foreground; Ctrl-C stops them all cleanly.

Each process is a real `orders` command (the same ones compose runs); this script only starts
them, forwards their output, and on Ctrl-C sends SIGTERM and waits for each to drain and exit.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stop_processes import stop_processes

ORDERS = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "orders")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    host = os.environ.get("API_HOST", "127.0.0.1")
    port = os.environ.get("API_PORT", "8000")

    processes = [subprocess.Popen([ORDERS, "api"], start_new_session=True)]
    processes += [
        subprocess.Popen([ORDERS, "worker"], start_new_session=True) for _ in range(args.workers)
    ]
    print(
        f"\n  API:  http://{host}:{port}\n  docs: http://{host}:{port}/docs\n"
        f"  {args.workers} workers in group {os.environ.get('WORKER_GROUP_ID', 'order-workers')}"
        "\n  Ctrl-C stops everything (Kafka and PostgreSQL keep running: `make down`)\n",
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

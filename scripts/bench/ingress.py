#!/usr/bin/env python3
"""`make bench-ingress`: accepted orders/s (acks=all) against a validate-only baseline.

One `orders api` process on loopback; wrk (Debian's package) drives, in the same run:
1. the baseline: POST /orders/validate, same bodies, same validation, nothing produced;
2. POST /orders: produced with the idempotent acks=all producer, 202 after the broker's ack;
   1 and 2 alternate for BENCH_ROUNDS rounds; each round gives one ratio, and the median
   counts (this machine is shared: a neighbour's burst moves one 10 s run by 10% and more);
3. POST /orders again at half the accepted rate (paced connections), for its p99 latency.
Targets (issue 3): accepted/s >= 70% of the baseline's requests/s; p99 < 50 ms at half rate.
With BENCH_KEYED=1, then: POST /orders without and with a new Idempotency-Key each, alternating
for BENCH_ROUNDS rounds, for the CPU a key costs per request (the API's, and PostgreSQL's).
Prints one JSON line with every number, and exits 1 when a target is missed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "scripts" / "bench" / "orders.lua"
ORDERS = str(ROOT / ".venv" / "bin" / "orders")
PORT = int(os.environ.get("BENCH_PORT", "8099"))
# The database `orders migrate` and the API use: DATABASE_URL's, or the default `orders`.
DATABASE = os.environ.get("DATABASE_URL", "/orders").rsplit("/", 1)[-1].split("?")[0]
DURATION = os.environ.get("BENCH_DURATION", "10s")
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
KEYED = os.environ.get("BENCH_KEYED", "") not in ("", "0")


def postgres_cpu(database: str) -> dict[int, float]:
    """CPU seconds (user + system) of each PostgreSQL backend serving `database`."""
    used = {}
    for process in psutil.process_iter(["cmdline"]):
        title = " ".join(process.info["cmdline"] or [])
        if title.startswith("postgres: ") and title.split()[2:3] == [database]:
            with contextlib.suppress(psutil.Error):
                used[process.pid] = sum(process.cpu_times()[:2])
    return used


def wrk(
    api: psutil.Process, path: str, connections: int, pace_ms: int = 0, keyed: bool = False
) -> dict[str, float]:
    env = {**os.environ, "WRK_RATE_PER_CONNECTION_MS": str(pace_ms)}
    if keyed:
        env["WRK_IDEMPOTENCY_KEY_PREFIX"] = uuid.uuid4().hex
    cpu_before = sum(api.cpu_times()[:2])
    database_before = postgres_cpu(DATABASE)
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{DURATION}",
            "--timeout",
            "10s",
            "-s",
            str(LUA),
            f"http://127.0.0.1:{PORT}{path}",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    match = re.search(r"RESULT (.*)", out)
    assert match, out
    fields = {k: float(v) for k, v in (kv.split("=") for kv in match.group(1).split())}
    seconds = fields["duration_us"] / 1e6
    ok = fields["requests"] - fields["non2xx"] - fields["errors"]
    api_cpu = sum(api.cpu_times()[:2]) - cpu_before
    # Backends that ended during the run are missed (pool overflow): a lower bound.
    database_cpu = sum(
        used - database_before.get(pid, 0.0) for pid, used in postgres_cpu(DATABASE).items()
    )
    return {
        "ok_per_s": round(ok / seconds, 1),
        "requests": fields["requests"],
        "failed": fields["non2xx"] + fields["errors"],
        "p50_ms": round(fields["p50_us"] / 1000, 2),
        "p99_ms": round(fields["p99_us"] / 1000, 2),
        # The API process's CPU (user + system) per answered request.
        "api_cpu_us": round(api_cpu / max(fields["requests"], 1) * 1e6, 1),
        "postgres_cpu_us": round(database_cpu / max(fields["requests"], 1) * 1e6, 1),
    }


def wait_ready(timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("the API did not become ready")


def keyed_round(api: psutil.Process, number: int) -> tuple[dict[str, float], dict[str, float]]:
    """One round of POST /orders without, then with, a new Idempotency-Key (order alternates)."""
    if number % 2 == 0:
        unkeyed = wrk(api, "/orders", CONNECTIONS)
        keyed = wrk(api, "/orders", CONNECTIONS, keyed=True)
    else:
        keyed = wrk(api, "/orders", CONNECTIONS, keyed=True)
        unkeyed = wrk(api, "/orders", CONNECTIONS)
    return unkeyed, keyed


def keyed_summary(rounds: list[tuple[dict[str, float], dict[str, float]]]) -> dict[str, Any]:
    def median(values: list[float]) -> float:
        return sorted(values)[(len(values) - 1) // 2]

    summary: dict[str, Any] = {}
    for name, index in (("unkeyed", 0), ("keyed", 1)):
        for field in ("ok_per_s", "api_cpu_us", "postgres_cpu_us", "p99_ms"):
            summary[f"{name}_{field}"] = median([r[index][field] for r in rounds])
    summary["keyed_extra_api_cpu_us_per_round"] = [
        round(keyed["api_cpu_us"] - unkeyed["api_cpu_us"], 1) for unkeyed, keyed in rounds
    ]
    return summary


def main() -> int:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: `make deps` installs it")
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", PORT)) == 0:
            raise SystemExit(f"port {PORT} is taken (set BENCH_PORT)")
    topic = f"bench-ingress-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "KAFKA_ORDERS_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": f"{topic}.DLQ",
        "LOG_LEVEL": "WARNING",
    }
    subprocess.run([ORDERS, "migrate"], env=env, check=True, capture_output=True)
    api = subprocess.Popen(
        [ORDERS, "api", "--port", str(PORT)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    measured = psutil.Process(api.pid)
    try:
        wait_ready()
        wrk(measured, "/orders/validate", CONNECTIONS)  # warm up both paths
        wrk(measured, "/orders", CONNECTIONS)
        rounds = []
        for number in range(ROUNDS):
            # Alternate which goes first, so a drift in the machine's speed favours neither.
            if number % 2 == 0:
                baseline = wrk(measured, "/orders/validate", CONNECTIONS)
                accepted = wrk(measured, "/orders", CONNECTIONS)
            else:
                accepted = wrk(measured, "/orders", CONNECTIONS)
                baseline = wrk(measured, "/orders/validate", CONNECTIONS)
            rounds.append((accepted["ok_per_s"] / baseline["ok_per_s"], baseline, accepted))
        # The median round (the lower one for an even count): its own numbers are reported.
        ratio, baseline, accepted = sorted(rounds, key=lambda r: r[0])[(len(rounds) - 1) // 2]
        half_rate = accepted["ok_per_s"] / 2
        connections = 16
        # wrk's delay() waits after each response, so a connection's period is the pause plus
        # the response time: calibrate the pause once against the rate it really produced.
        pace_ms = max(1, round(connections / half_rate * 1000))
        paced = wrk(measured, "/orders", connections, pace_ms)
        if paced["ok_per_s"] < half_rate * 0.9:
            response_ms = connections / paced["ok_per_s"] * 1000 - pace_ms
            pace_ms = max(1, round(connections / half_rate * 1000 - response_ms))
            paced = wrk(measured, "/orders", connections, pace_ms)
        keyed_rounds = [keyed_round(measured, number) for number in range(ROUNDS if KEYED else 0)]
    finally:
        api.terminate()
        api.wait(30)
    failures = sum(r[2]["failed"] for r in rounds) + paced["failed"]
    result = {
        "baseline_validate_req_per_s": baseline["ok_per_s"],
        "accepted_orders_per_s": accepted["ok_per_s"],
        "ratio": round(ratio, 3),
        "ratio_per_round": [round(r[0], 3) for r in rounds],
        "accepted_failures": failures,
        "half_rate_target_per_s": round(half_rate, 1),
        "half_rate_achieved_per_s": paced["ok_per_s"],
        "half_rate_p50_ms": paced["p50_ms"],
        "half_rate_p99_ms": paced["p99_ms"],
        "full_load_p99_ms": accepted["p99_ms"],
        "api_cpu_us_per_validate": baseline["api_cpu_us"],
        "api_cpu_us_per_accepted": accepted["api_cpu_us"],
        "topic": topic,
    }
    if keyed_rounds:
        result.update(keyed_summary(keyed_rounds))
        failures += sum(r["failed"] for pair in keyed_rounds for r in pair)
    print(json.dumps(result))
    met = ratio >= 0.70 and paced["p99_ms"] < 50 and failures == 0
    print("targets met" if met else "TARGETS MISSED", file=sys.stderr)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""`make bench-ingress`: accepted orders/s (acks=all) against a validate-only baseline.

One `orders api` process on loopback, authenticating every request (one service's bearer token,
from `orders token`; no rate limit: one client floods on purpose); wrk (Debian's package)
drives, in the same run:
1. the baseline: POST /orders/validate, same bodies, same validation, nothing produced;
2. POST /orders: produced with the idempotent acks=all producer, 202 after the broker's ack;
3. POST /orders to a second `orders api` with AUTH_ENABLED=false, for what authentication
   costs: `auth_added_us_per_order` is the API CPU per accepted order, on minus off;
   1, 2 and 3 alternate for BENCH_ROUNDS rounds; each round gives one ratio (and one
   difference), and the median counts (this machine is shared: a neighbour's burst moves one
   10 s run by 10% and more);
4. POST /orders again at half the accepted rate (paced connections), for its p99 latency.
In-process, it also times the verifier alone: a token seen before, and a new one (ES256).
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

from app.auth import local_token
from app.settings import AuthSettings

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
    api: psutil.Process,
    path: str,
    connections: int,
    pace_ms: int = 0,
    keyed: bool = False,
    port: int = PORT,
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
            f"http://127.0.0.1:{port}{path}",
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


def wait_ready(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
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


def verifier_costs(auth: AuthSettings) -> dict[str, float]:
    """Microseconds, in-process: verifying a new token (ES256), and all that a request with a
    known token pays (header, cached verification, scope, a rate-limit bucket, kept principal)."""
    import asyncio
    from types import SimpleNamespace

    from starlette.requests import Request

    from app.api.authn import Authenticator
    from app.api.rate_limit import RateLimiter

    async def measure() -> dict[str, float]:
        authenticator = Authenticator.from_settings(auth)
        await authenticator.start()
        assert authenticator.verifier is not None
        fresh = [local_token(auth, f"bench-{n}") for n in range(300)]
        started = time.perf_counter()
        for token in fresh:
            await authenticator.verifier.principal(token)
        new_token = (time.perf_counter() - started) / len(fresh)
        app = SimpleNamespace(state=SimpleNamespace(rate_limiter=RateLimiter(1e9, 10**9)))
        scopes = [
            {
                "type": "http",
                "app": app,
                "headers": [(b"host", b"bench"), (b"authorization", b"Bearer " + token.encode())],
            }
            for token in fresh
        ]
        rounds = 100
        started = time.perf_counter()
        for _ in range(rounds):
            for scope in scopes:
                await authenticator.authenticate(Request(scope), "orders:write")
        with_auth = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(rounds):
            for scope in scopes:
                Request(scope)
        without = time.perf_counter() - started
        return {
            "auth_verify_us_new_token": round(new_token * 1e6, 1),
            "auth_us_per_request_known_token": round(
                (with_auth - without) / (rounds * len(scopes)) * 1e6, 2
            ),
        }

    return asyncio.run(measure())


def start_api(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [ORDERS, "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> int:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: `make deps` installs it")
    for port in (PORT, PORT + 1):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                raise SystemExit(f"port {port} is taken (set BENCH_PORT; it uses the next too)")
    topic = f"bench-ingress-{uuid.uuid4().hex[:6]}"
    auth = AuthSettings()
    env = {
        **os.environ,
        "KAFKA_ORDERS_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": f"{topic}.DLQ",
        "LOG_LEVEL": "WARNING",
        # One client sends everything: a per-client rate limit would measure itself.
        "API_RATE_LIMIT_PER_S": "0",
        "API_SERVICE_RATE_LIMIT_PER_S": "0",
        "AUTH_ENABLED": "true",
        "AUTH_LOCAL_KEY_FILE": str(auth.local_key_file.resolve()),
    }
    subprocess.run([ORDERS, "migrate"], env=env, check=True, capture_output=True)
    # One service's token (both scopes), minted before the API starts: the same local key.
    token = subprocess.run(
        [
            ORDERS,
            "token",
            "--subject",
            "bench",
            "--scope",
            "orders:write",
            "--scope",
            "orders:read",
            "--ttl",
            "86400",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    os.environ["WRK_AUTHORIZATION"] = f"Bearer {token}"
    api = start_api(env, PORT)
    api_off = start_api({**env, "AUTH_ENABLED": "false"}, PORT + 1)
    measured, measured_off = psutil.Process(api.pid), psutil.Process(api_off.pid)
    try:
        wait_ready(PORT)
        wait_ready(PORT + 1)
        wrk(measured, "/orders/validate", CONNECTIONS)  # warm up every path
        wrk(measured, "/orders", CONNECTIONS)
        wrk(measured_off, "/orders", CONNECTIONS, port=PORT + 1)
        rounds = []
        for number in range(ROUNDS):
            # Rotate which goes first, so a drift in the machine's speed favours none.
            runs = {
                "baseline": lambda: wrk(measured, "/orders/validate", CONNECTIONS),
                "accepted": lambda: wrk(measured, "/orders", CONNECTIONS),
                "off": lambda: wrk(measured_off, "/orders", CONNECTIONS, port=PORT + 1),
            }
            order = list(runs)[number % 3 :] + list(runs)[: number % 3]
            done = {name: runs[name]() for name in order}
            baseline, accepted, off = done["baseline"], done["accepted"], done["off"]
            ratio = accepted["ok_per_s"] / baseline["ok_per_s"]
            rounds.append((ratio, baseline, accepted, off))
        auth_added = [round(r[2]["api_cpu_us"] - r[3]["api_cpu_us"], 1) for r in rounds]
        # The median round (the lower one for an even count): its own numbers are reported.
        ratio, baseline, accepted, off = sorted(rounds, key=lambda r: r[0])[(len(rounds) - 1) // 2]
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
        for process in (api, api_off):
            process.terminate()
        for process in (api, api_off):
            process.wait(30)
    failures = sum(r[2]["failed"] + r[3]["failed"] for r in rounds) + paced["failed"]
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
        "api_cpu_us_per_accepted_auth_off": off["api_cpu_us"],
        "auth_added_us_per_order": sorted(auth_added)[(len(auth_added) - 1) // 2],
        "auth_added_us_per_round": auth_added,
        **verifier_costs(auth),
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

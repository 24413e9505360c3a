#!/usr/bin/env python3
"""`make bench-ingress`: accepted orders/s (acks=all) against a validate-only baseline.

One `orders api` process on loopback, authenticating every request (one service's bearer token,
from `orders token`; no rate limit: one client floods on purpose); wrk (Debian's package)
drives, in the same run:
1. the baseline: POST /orders/validate, same bodies, same validation, nothing produced;
2. POST /orders: produced with the idempotent acks=all producer, 202 after the broker's ack;
3. POST /orders to one more `orders api` per comparison (--compare, each its own port) and to
   the measured one, side by side (two wrk at once, each paced at BENCH_COMPARE_RATE orders/s;
   one run after another differs by more than a feature costs), for what one feature costs in
   API CPU per accepted order:
   - auth: AUTH_ENABLED=false (`auth_added_us_per_order`: on minus off);
   - metrics: METRICS_ENABLED=false (`metrics_cpu_ratio`: on over off, target <= 1.05, issue 12);
   - multiprocess: the metrics in prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR,
     as `orders api --workers N` keeps them) instead of in memory
     (`multiprocess_added_us_per_order`);
   1, 2 and 3 alternate for BENCH_ROUNDS rounds; each round gives one ratio (and one
   difference), and the median counts (this machine is shared: a neighbour's burst moves one
   10 s run by 10% and more);
4. POST /orders again at half the accepted rate (paced connections), for its p99 latency.
In-process, it also times the verifier alone (a token seen before, and a new one: ES256), and
what the metrics add to one accepted order, in memory and in multiprocess mode
(`metrics_us_per_order_in_process*`: the request middleware and the producer's metrics).
Targets (issue 3): accepted/s >= 70% of the baseline's requests/s; p99 < 50 ms at half rate;
(issue 12) API CPU per accepted order with metrics within 5% of the same without.
With BENCH_KEYED=1, then: POST /orders without and with a new Idempotency-Key each, alternating
for BENCH_ROUNDS rounds, for the CPU a key costs per request (the API's, and PostgreSQL's).
Prints one JSON line with every number, and exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
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
# The paced rate of each API in a comparison (side_by_side): well below what one API takes, so
# that both are answered at the same rate whatever each costs.
COMPARE_RATE_PER_S = int(os.environ.get("BENCH_COMPARE_RATE", "1000"))


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
        wrk_command(path, connections, port), capture_output=True, text=True, env=env, check=True
    ).stdout
    api_cpu = sum(api.cpu_times()[:2]) - cpu_before
    # Backends that ended during the run are missed (pool overflow): a lower bound.
    database_cpu = sum(
        used - database_before.get(pid, 0.0) for pid, used in postgres_cpu(DATABASE).items()
    )
    return wrk_result(out, api_cpu, database_cpu)


def wrk_command(path: str, connections: int, port: int) -> list[str]:
    return [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{DURATION}",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}{path}",
    ]


def side_by_side(apis: list[tuple[psutil.Process, int]]) -> list[dict[str, float]]:
    """POST /orders to several APIs at once, one wrk each, at the same paced rate
    (COMPARE_RATE_PER_S each): each API's CPU per order, over the same seconds of the machine
    and at the same rate. What one feature costs is a few microseconds; a run measured after
    another differs by tens (a neighbour's burst, the broker's own work), and so do two APIs
    flooded at once (the one that gets more CPU batches more records per produce request,
    which lowers its CPU per order)."""
    connections = 32
    pace_ms = max(1, round(connections / COMPARE_RATE_PER_S * 1000))
    env = {**os.environ, "WRK_RATE_PER_CONNECTION_MS": str(pace_ms)}
    before = [sum(api.cpu_times()[:2]) for api, _ in apis]
    runs = [
        subprocess.Popen(
            wrk_command("/orders", connections, port), stdout=subprocess.PIPE, text=True, env=env
        )
        for _, port in apis
    ]
    outs = [run.communicate()[0] for run in runs]
    assert all(run.returncode == 0 for run in runs), outs
    used = [sum(api.cpu_times()[:2]) - cpu for (api, _), cpu in zip(apis, before, strict=True)]
    return [wrk_result(out, cpu, 0.0) for out, cpu in zip(outs, used, strict=True)]


def wrk_result(out: str, api_cpu: float, database_cpu: float) -> dict[str, float]:
    match = re.search(r"RESULT (.*)", out)
    assert match, out
    fields = {k: float(v) for k, v in (kv.split("=") for kv in match.group(1).split())}
    seconds = fields["duration_us"] / 1e6
    ok = fields["requests"] - fields["non2xx"] - fields["errors"]
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


# What the metrics add to one accepted order, timed in-process: the request middleware around an
# endpoint that answers at once (against the bare endpoint), then the producer's metrics for one
# record (its ack latency, and a share of a batch's two updates). Run in a child process, so
# that prometheus-client picks its value class from PROMETHEUS_MULTIPROC_DIR as an API would.
METRICS_MICRO = """
import asyncio, json, time
from types import SimpleNamespace
from app.api.metrics import ProducerMetrics
from app.api.request_metrics import RequestMetrics

START = {"type": "http.response.start", "status": 202, "headers": []}
BODY = {"type": "http.response.body", "body": b"{}"}

async def endpoint(scope, receive, send):
    await send(START)
    await send(BODY)

async def sent(message):
    return None

async def receive():
    return {"type": "http.request", "body": b"", "more_body": False}

async def timed(app, n):
    scope = {"type": "http", "path": "/orders", "route": SimpleNamespace(path_format="/orders")}
    started = time.perf_counter()
    for _ in range(n):
        await app(scope, receive, sent)
    return time.perf_counter() - started

async def main():
    n, batch = 200_000, 30
    wrapped = RequestMetrics(endpoint)
    await timed(wrapped, 1000)
    middleware = min([await timed(wrapped, n) - await timed(endpoint, n) for _ in range(3)]) / n
    producer = ProducerMetrics("bench")
    started = time.perf_counter()
    for i in range(n):
        producer.ack_seconds.observe(0.004)
        if i % batch == 0:
            producer.batch_records.observe(batch)
            producer.acknowledged(i % 6, batch)
    per_record = (time.perf_counter() - started) / n
    print(json.dumps({"middleware_us": middleware * 1e6, "producer_us": per_record * 1e6}))

asyncio.run(main())
"""


def metrics_costs(multiprocess_dir: str | None) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if multiprocess_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = multiprocess_dir
    out = subprocess.run(
        [sys.executable, "-c", METRICS_MICRO], env=env, check=True, capture_output=True, text=True
    ).stdout
    costs: dict[str, float] = json.loads(out)
    return {name: round(us, 2) for name, us in costs.items()}


def start_api(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [ORDERS, "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Environment: BENCH_ROUNDS (5), BENCH_DURATION (10s), BENCH_CONNECTIONS (64), "
        "BENCH_PORT (8099; each comparison takes the next port), BENCH_COMPARE_RATE (1000 "
        "orders/s per API in a comparison), BENCH_KEYED=1.",
    )
    parser.add_argument(
        "--compare",
        action="append",
        choices=sorted(COMPARISONS),
        help="one more API process per comparison, in the same rounds (repeatable; "
        "default: auth and metrics)",
    )
    args = parser.parse_args()
    args.compare = list(dict.fromkeys(args.compare or ["auth", "metrics"]))
    return args


# Each comparison: the environment of its API process (beside the measured one's), and the
# names its numbers take in the JSON.
COMPARISONS = {
    "auth": {"AUTH_ENABLED": "false"},
    "metrics": {"METRICS_ENABLED": "false"},
    "multiprocess": {},  # PROMETHEUS_MULTIPROC_DIR: a fresh directory, set in main()
}


def compared(name: str, rounds: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """The comparison's numbers: its CPU per accepted order, and what the measured API adds."""

    def median(values: list[float]) -> float:
        return sorted(values)[(len(values) - 1) // 2]

    # Each round ran the measured API and this one side by side (side_by_side).
    mine = [r[f"{name}:measured"]["api_cpu_us"] for r in rounds]
    theirs = [r[name]["api_cpu_us"] for r in rounds]
    added = [round(on - off, 1) for on, off in zip(mine, theirs, strict=True)]
    cpu = median(theirs)
    if name == "auth":
        return {
            "api_cpu_us_per_accepted_auth_off": cpu,
            "auth_added_us_per_order": median(added),
            "auth_added_us_per_round": added,
        }
    if name == "metrics":
        ratios = [on / off for on, off in zip(mine, theirs, strict=True)]
        return {
            "api_cpu_us_per_accepted_metrics_on": median(mine),
            "api_cpu_us_per_accepted_metrics_off": cpu,
            "metrics_cpu_ratio": round(median(ratios), 3),
            "metrics_cpu_ratio_per_round": [round(ratio, 3) for ratio in ratios],
            "metrics_added_us_per_order": median(added),
            "metrics_added_us_per_round": added,
        }
    # The measured API keeps its metrics in memory: minus that is what files cost.
    return {
        "api_cpu_us_per_accepted_multiprocess": cpu,
        "multiprocess_added_us_per_order": -median(added),
        "multiprocess_added_us_per_round": [-a for a in added],
    }


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: `make deps` installs it")
    ports = {name: PORT + 1 + n for n, name in enumerate(args.compare)}
    for port in (PORT, *ports.values()):
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
    # The measured API keeps its metrics in memory (one process: no PROMETHEUS_MULTIPROC_DIR).
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["METRICS_ENABLED"] = "true"
    scratch = tempfile.TemporaryDirectory(prefix="bench-ingress-metrics-")
    overrides = {name: dict(COMPARISONS[name]) for name in args.compare}
    if "multiprocess" in overrides:
        overrides["multiprocess"]["PROMETHEUS_MULTIPROC_DIR"] = scratch.name
    api = start_api(env, PORT)
    others = {name: start_api({**env, **overrides[name]}, ports[name]) for name in args.compare}
    measured = psutil.Process(api.pid)
    compare = {name: psutil.Process(process.pid) for name, process in others.items()}
    try:
        for port in (PORT, *ports.values()):
            wait_ready(port)
        wrk(measured, "/orders/validate", CONNECTIONS)  # warm up every path
        wrk(measured, "/orders", CONNECTIONS)
        for name, process in compare.items():
            wrk(process, "/orders", CONNECTIONS, port=ports[name])

        def versus(name: str) -> dict[str, dict[str, float]]:
            on, off = side_by_side([(measured, PORT), (compare[name], ports[name])])
            return {f"{name}:measured": on, name: off}

        rounds: list[dict[str, dict[str, float]]] = []
        for number in range(ROUNDS):
            # Rotate which goes first, so a drift in the machine's speed favours none.
            runs = {
                "baseline": lambda: {"baseline": wrk(measured, "/orders/validate", CONNECTIONS)},
                "accepted": lambda: {"accepted": wrk(measured, "/orders", CONNECTIONS)},
                **{name: functools.partial(versus, name) for name in ports},
            }
            shift = number % len(runs)
            order = list(runs)[shift:] + list(runs)[:shift]
            rounds.append({key: run for name in order for key, run in runs[name]().items()})
        ratios = [r["accepted"]["ok_per_s"] / r["baseline"]["ok_per_s"] for r in rounds]
        # The median round (the lower one for an even count): its own numbers are reported.
        median_round = sorted(range(len(rounds)), key=lambda n: ratios[n])[(len(rounds) - 1) // 2]
        ratio = ratios[median_round]
        baseline, accepted = rounds[median_round]["baseline"], rounds[median_round]["accepted"]
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
        for process in (api, *others.values()):
            process.terminate()
        for process in (api, *others.values()):
            process.wait(30)
        scratch.cleanup()
    failures = paced["failed"] + sum(
        run["failed"] for r in rounds for name, run in r.items() if name != "baseline"
    )
    result = {
        "baseline_validate_req_per_s": baseline["ok_per_s"],
        "accepted_orders_per_s": accepted["ok_per_s"],
        "ratio": round(ratio, 3),
        "ratio_per_round": [round(r, 3) for r in ratios],
        "accepted_failures": failures,
        "half_rate_target_per_s": round(half_rate, 1),
        "half_rate_achieved_per_s": paced["ok_per_s"],
        "half_rate_p50_ms": paced["p50_ms"],
        "half_rate_p99_ms": paced["p99_ms"],
        "full_load_p99_ms": accepted["p99_ms"],
        "api_cpu_us_per_validate": baseline["api_cpu_us"],
        "api_cpu_us_per_accepted": accepted["api_cpu_us"],
        **{key: v for name in args.compare for key, v in compared(name, rounds).items()},
        **verifier_costs(auth),
        "topic": topic,
    }
    if "metrics" in args.compare or "multiprocess" in args.compare:
        in_memory = metrics_costs(None)
        with tempfile.TemporaryDirectory(prefix="bench-ingress-micro-") as directory:
            in_files = metrics_costs(directory)
        result["metrics_us_per_order_in_process"] = round(sum(in_memory.values()), 2)
        result["metrics_us_per_order_in_process_multiprocess"] = round(sum(in_files.values()), 2)
        result["metrics_us_in_process_parts"] = {"memory": in_memory, "multiprocess": in_files}
    if keyed_rounds:
        result.update(keyed_summary(keyed_rounds))
        failures += sum(r["failed"] for pair in keyed_rounds for r in pair)
    print(json.dumps(result))
    met = ratio >= 0.70 and paced["p99_ms"] < 50 and failures == 0
    if "metrics" in args.compare:
        met = met and result["metrics_cpu_ratio"] <= 1.05
    print("targets met" if met else "TARGETS MISSED", file=sys.stderr)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

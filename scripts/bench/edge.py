#!/usr/bin/env python3
"""What the edge limits cost per request: API CPU microseconds, stock uvicorn against ours.

Two API servers of the same app (create_app, AUTH_ENABLED=false), one at a time, on loopback:
- `stock`: uvicorn's own httptools protocol, no in-flight cap, no hygiene headers;
- `edge`: app/api/http_server.py's (EdgeProtocol with its head/timeout/connection accounting,
  the InFlightCap middleware, the hygiene headers, no server banner).
wrk drives each for BENCH_DURATION at BENCH_CONNECTIONS keep-alive connections, on a path that is
not a probe (the in-flight cap counts it) and touches no service: GET /no-such-path, a 404
problem. The server's CPU (user + system, psutil) over the run / the requests it answered gives
microseconds per request; the variants alternate for BENCH_ROUNDS rounds and the median of the
per-round differences is the cost (this machine is shared: one run alone moves by 10%).
Needs `make up` (the lifespan connects to Kafka and PostgreSQL). Prints one JSON line.

Then, in-process and far less noisy (no sockets, no other process): the same request fed
BENCH_MICRO_REQUESTS times to each protocol over an in-memory transport, with an app that answers
at once (behind InFlightCap, for ours) and uvicorn's default headers as each server sets them;
the difference of process CPU per request is `micro_added_us_per_request`; the same for an order
as clients send it (a POST with a bearer token and a JSON body, the body read by the app) is
`micro_post_added_us_per_request`; next to them, the cost of one `rate_limit.admit` call's
bucket arithmetic.

    .venv/bin/python scripts/bench/edge.py
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]
PORT = int(os.environ.get("BENCH_PORT", "8098"))
DURATION = os.environ.get("BENCH_DURATION", "8s")
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
MICRO_REQUESTS = int(os.environ.get("BENCH_MICRO_REQUESTS", "50000"))
PATH = "/no-such-path"
REQUEST = b"GET /no-such-path HTTP/1.1\r\nHost: 127.0.0.1:8098\r\nUser-Agent: wrk\r\n\r\n"
# An order as a client sends it: a bearer token, a JSON body, in one read (the app reads the body).
ORDER = b'{"customer_id":"c-1","items":[{"sku":"sku-1","quantity":2,"unit_price_cents":1250}]}'
POST = (
    b"POST /orders HTTP/1.1\r\nHost: 127.0.0.1:8098\r\nUser-Agent: bench\r\n"
    b"Content-Type: application/json\r\nAuthorization: Bearer " + b"t" * 600 + b"\r\n"
    b"Idempotency-Key: 3f0c8b8e-5a4e-4c1e-9f6e-0d2b7c1a9e11\r\n"
    b"Content-Length: %d\r\n\r\n" % len(ORDER) + ORDER
)


def serve(variant: str) -> None:
    """The server process: the app under the stock protocol or under ours."""
    import uvicorn

    from app.api import create_app
    from app.api.edge_guard import InFlightCap
    from app.api.http_server import serve as serve_edge
    from app.settings import get_settings

    settings = get_settings()
    app = create_app(settings)
    if variant == "stock":
        app.user_middleware = [m for m in app.user_middleware if m.cls is not InFlightCap]  # type: ignore[comparison-overlap]
        uvicorn.run(app, host="127.0.0.1", port=PORT, http="httptools", log_level="warning")
    else:
        serve_edge(app, settings, "127.0.0.1", PORT, access_log=False)


def start(variant: str) -> subprocess.Popen[bytes]:
    env = os.environ | {"AUTH_ENABLED": "false", "LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", variant],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{PORT}/healthz", timeout=1)
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
        else:
            return server
    server.kill()
    raise SystemExit(f"the {variant} server did not start")


def wrk(duration: str) -> int:
    """Requests answered (wrk's count)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}", f"http://127.0.0.1:{PORT}{PATH}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = re.search(r"(\d+) requests in", out)
    assert found, out
    return int(found.group(1))


def measure(variant: str) -> tuple[float, float]:
    """(CPU us per request, requests/s) of one run."""
    server = start(variant)
    try:
        wrk("2s")  # warm-up
        process = psutil.Process(server.pid)
        cpu = process.cpu_times()
        started = time.monotonic()
        requests = wrk(DURATION)
        elapsed = time.monotonic() - started
        used = process.cpu_times()
        seconds = (used.user - cpu.user) + (used.system - cpu.system)
        return seconds / requests * 1e6, requests / elapsed
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


class MemoryTransport(asyncio.Transport):
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8098)}.get(name)

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def answer(scope: Any, receive: Any, send: Any) -> None:
    while (await receive())["more_body"]:
        pass
    await send(
        {"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"{}"})


async def micro_run(variant: str, request: bytes) -> float:
    """Process CPU microseconds per request through one protocol, in-process."""
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from app.api.edge_guard import InFlightCap
    from app.api.edge_limits import EdgeLimits
    from app.api.edge_protocol import EdgeProtocol
    from app.api.edge_watch import ConnectionWatch
    from app.api.http_server import HYGIENE_HEADERS
    from app.settings import ApiSettings

    loop = asyncio.get_running_loop()
    state = ServerState()
    date = [(b"date", b"Thu, 01 Jan 2026 00:00:00 GMT")]
    protocol: HttpToolsProtocol
    if variant == "stock":
        state.default_headers = [*date, (b"server", b"uvicorn")]
        protocol = HttpToolsProtocol(
            Config(answer, lifespan="off", access_log=False), state, {}, loop
        )
    else:
        encoded = [(k.lower().encode(), v.encode()) for k, v in HYGIENE_HEADERS]
        state.default_headers = date + encoded
        limits = EdgeLimits.from_settings(ApiSettings())
        capped = InFlightCap(answer, max_in_flight=512, retry_after_s=2)
        protocol = EdgeProtocol(
            Config(capped, lifespan="off", access_log=False),
            state,
            {},
            loop,
            limits=limits,
            watch=ConnectionWatch(limits),
        )
    protocol.connection_made(MemoryTransport())
    started = time.process_time()
    for _ in range(MICRO_REQUESTS):
        protocol.data_received(request)
        await asyncio.sleep(0)
    used = time.process_time() - started
    protocol.connection_lost(None)
    return used / MICRO_REQUESTS * 1e6


def admit_cost() -> float:
    """Microseconds of one admitted `take` (the bucket arithmetic of rate_limit.admit)."""
    from app.api.rate_limit import RateLimiter

    limiter = RateLimiter(1e12, 10**12)
    started = time.process_time()
    for _ in range(MICRO_REQUESTS):
        limiter.take("client")
    return (time.process_time() - started) / MICRO_REQUESTS * 1e6


def micro() -> dict[str, Any]:
    import uvloop

    report: dict[str, Any] = {}
    for name, request in (("", REQUEST), ("post_", POST)):
        runs: dict[str, list[float]] = {"stock": [], "edge": []}
        for _ in range(ROUNDS):
            for variant in runs:
                runs[variant].append(uvloop.run(micro_run(variant, request)))
        added = [e - s for s, e in zip(runs["stock"], runs["edge"], strict=True)]
        report |= {
            f"micro_{name}stock_us": round(statistics.median(runs["stock"]), 2),
            f"micro_{name}edge_us": round(statistics.median(runs["edge"]), 2),
            f"micro_{name}added_us_per_request": round(statistics.median(added), 2),
        }
    return report | {"rate_limit_take_us": round(admit_cost(), 2)}


def main() -> None:
    runs: dict[str, list[tuple[float, float]]] = {"stock": [], "edge": []}
    for _ in range(ROUNDS):
        for variant in runs:
            runs[variant].append(measure(variant))
    added = [e[0] - s[0] for s, e in zip(runs["stock"], runs["edge"], strict=True)]
    report: dict[str, Any] = {
        variant: {
            "cpu_us_per_request": round(statistics.median(r[0] for r in results), 1),
            "requests_per_s": round(statistics.median(r[1] for r in results)),
            "runs_us": [round(r[0], 1) for r in results],
        }
        for variant, results in runs.items()
    }
    report["edge_added_us_per_request"] = round(statistics.median(added), 1)
    report["added_per_round_us"] = [round(a, 1) for a in added]
    print(json.dumps(report | micro()))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
    elif sys.argv[1:2] == ["--micro"]:
        print(json.dumps(micro()))
    else:
        main()

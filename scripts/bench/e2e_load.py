"""`make bench-e2e`'s load: wrk with scripts/bench/e2e.lua, its numbers and its own CPU."""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).resolve().parent / "e2e.lua"


@dataclass(frozen=True)
class Load:
    requests: int
    failed: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    sent_bytes: int
    received_bytes: int
    cpu_s: float  # wrk's own user + system CPU (its rusage)
    ended_at: float  # time.time() when wrk exited: the last 202 had been answered


def generate(
    port: int, seconds: int, accepted_prefix: Path, token: str, connections: int, rate: int = 0
) -> Load:
    """Run wrk for `seconds`, its 202 bodies written to accepted_prefix<thread>: closed loop
    (rate 0: each connection sends its next order once the last is answered), or each
    connection paced to about `rate` orders/s in all."""
    env = {
        **os.environ,
        "WRK_AUTHORIZATION": f"Bearer {token}",
        "WRK_ACCEPTED_PREFIX": str(accepted_prefix),
        "WRK_RATE_PER_CONNECTION_MS": str(round(connections / rate * 1000) if rate else 0),
    }
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    command += ["-s", str(LUA), f"http://127.0.0.1:{port}/orders"]
    wrk = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    assert wrk.stdout is not None
    out = wrk.stdout.read()
    # wait4, not wait: its rusage is wrk's own CPU, however short-lived the process.
    _, status, usage = os.wait4(wrk.pid, 0)
    wrk.returncode = os.waitstatus_to_exitcode(status)
    ended_at = time.time()
    if wrk.returncode != 0:
        msg = f"wrk failed ({wrk.returncode}): {out}"
        raise SystemExit(msg)
    fields = _fields(out, "RESULT") | _fields(out, "SENT")
    return Load(
        requests=int(fields["requests"]),
        failed=int(fields["non2xx"] + fields["errors"]),
        seconds=fields["duration_us"] / 1e6,
        p50_ms=fields["p50_us"] / 1000,
        p90_ms=fields["p90_us"] / 1000,
        p99_ms=fields["p99_us"] / 1000,
        max_ms=fields["max_us"] / 1000,
        sent_bytes=int(fields["bytes"]),
        received_bytes=int(fields["received"]),
        cpu_s=usage.ru_utime + usage.ru_stime,
        ended_at=ended_at,
    )


def _fields(out: str, tag: str) -> dict[str, float]:
    match = re.search(rf"^{tag} (.*)$", out, re.MULTILINE)
    if match is None:
        msg = f"wrk printed no {tag} line: {out}"
        raise SystemExit(msg)
    return {k: float(v) for k, v in (kv.split("=") for kv in match.group(1).split())}


def read_accepted(prefix: Path) -> list[str]:
    lines: list[str] = []
    for path in sorted(prefix.parent.glob(prefix.name + "*")):
        lines += path.read_text().splitlines()
    return lines

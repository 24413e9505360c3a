#!/usr/bin/env python3
"""CPU per `take` of the rate limiter: in one process's memory (one API process) against the
table shared by several API processes (a memory-mapped file and a byte-range lock per take).

In-process, one core: `.venv/bin/python scripts/bench/rate_limit_cost.py`. Each limiter admits
every take (burst far above the count), over 1 client and over 5,000 distinct clients in turn.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from app.api.rate_limit import RateLimiter, SharedRateLimiter
from app.api.shared_buckets import BucketTable

TAKES = 200_000
RATE, BURST = 1e6, 10**9


def us_per_take(limiter: RateLimiter, clients: list[str]) -> float:
    keys = [clients[i % len(clients)] for i in range(TAKES)]
    take = limiter.take
    started = time.process_time()
    for key in keys:
        take(key)
    return (time.process_time() - started) / TAKES * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        table = Path(scratch) / "bench.buckets"
        BucketTable.create(table)
        limiters = {
            "in memory": RateLimiter(RATE, BURST),
            "shared": SharedRateLimiter(table, RATE, BURST),
        }
        for clients in (1, 5_000):
            keys = [f"client-{n}" for n in range(clients)]
            for name, limiter in limiters.items():
                print(f"{name:>9}, {clients:>5} clients: {us_per_take(limiter, keys):.2f} us/take")


if __name__ == "__main__":
    main()

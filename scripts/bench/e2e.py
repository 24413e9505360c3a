#!/usr/bin/env python3
"""`make bench-e2e`: orders through the real pipeline, HTTP in and PostgreSQL row out.

Each configuration (API processes x workers: BENCH_CONFIGS, default 1x1,1x2,2x1,2x2; `orders api
--workers N` runs N API processes on one port) gets a topic, a consumer group and a database of
its own (`orders-e2e-<run>-<config>`, `orders_e2e_<run>_<config>`), created first and removed
at the end, with every process it starts stopped whatever happens. Then:
1. `orders api` and the workers start on the shared broker and PostgreSQL (`make up`), with one
   service's bearer token and no per-client rate limit (one generator sends everything);
2. a warm-up (BENCH_WARMUP_SECONDS, 3) at full load, drained;
3. the load: wrk, closed loop (BENCH_CONNECTIONS, 256, connections each sending its next
   order as soon as the last is answered) for BENCH_SECONDS (20): the highest rate the
   pipeline takes (BENCH_RATE=N paces it to about N orders/s instead); then the load stops and
   the drain is timed (last 202 to the group's stored position reaching the log end, polled
   every 50 ms);
4. the check (scripts/bench/e2e_check.py): every order answered 202 stored once, from the
   record the 202 named, and each customer's orders numbered in acceptance (offset) order;
5. CPU per stored order of each kind of process, from psutil's CPU times of the process trees
   over the load and the drain: the API (all its processes), the workers, the broker (the java
   process listening on the bootstrap port), PostgreSQL (the postmaster's tree, less backends of
   other databases) and the load generator (wrk's own rusage); the machine's busy CPU beside
   them (what is left is other work on the machine: this script, other helpers' tests);
6. bytes per order: HTTP request and response, the Kafka record (key, value, headers), the
   topic's log on the broker's disk (a batch of lz4-compressed records, as produced and
   fetched), the orders table (pg_total_relation_size) and PostgreSQL's WAL (server-wide: an
   upper bound when other databases write meanwhile). scripts/bench/capacity.py reads them.

End-to-end latency is the row's `processed_at - accepted_at`: accepted_at is stamped by the API
before it produces (so it includes the acks=all round trip), processed_at is PostgreSQL's now(),
the start of the worker's batch transaction, so the figure leaves out the transaction itself
(the commit, which the worker's orders_end_to_end_seconds histogram includes).

The load generator: wrk with a Lua script (scripts/bench/e2e.lua: orders.lua's requests, and each
202's body written to a file per thread). Measured against a Python client (asyncio streams,
raw HTTP/1.1 keep-alive, 64 connections, the same bodies, bodies parsed; the cheapest Python
client there is; uvloop), both against the same `orders api`: GENERATOR_NOTE below has the
numbers. wrk costs 25-35% less CPU per request, and every microsecond the generator spends is
taken from the pipeline on this 2-core machine.

Prints a table per configuration with its CPU breakdown, then one JSON line with every number,
and writes the same JSON to scripts/bench/results/e2e.json (the run the README quotes).
Exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from e2e_check import Row, check, parse_accepted
from e2e_load import Load, generate, read_accepted
from e2e_processes import (
    Broker,
    CpuMeter,
    Kind,
    find_broker,
    find_postmaster,
    serves_database,
    topic_log_bytes,
)
from e2e_stack import Config, Stack, api_supports_workers, parse_configs

from app.auth import local_token
from app.operations.kafka_clients import offsets_consumer, topic_partitions
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "scripts" / "bench" / "results" / "e2e.json"
SECONDS = int(os.environ.get("BENCH_SECONDS", "20"))
WARMUP_S = int(os.environ.get("BENCH_WARMUP_SECONDS", "3"))
# Enough orders in flight that each produce request, fetch and batch transaction carries
# dozens: at 64, the same run costs ~1.7x the CPU per order (a closed loop's rate is what its
# concurrency lets batch; its HTTP latency is mostly the queue: connections / rate).
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "256"))
CONFIGS = os.environ.get("BENCH_CONFIGS", "1x1,1x2,2x1,2x2")
# 0: closed loop, as fast as the pipeline answers. N: each connection paced, about N orders/s
# in all (for the CPU per order and the latency at a rate the machine sustains).
RATE = int(os.environ.get("BENCH_RATE", "0"))
DRAIN_TIMEOUT_S = 120
POLL_S = 0.05
RECORD_SAMPLE = 1000
GENERATOR_NOTE = (
    "wrk with e2e.lua (each 202 body recorded): 43-48 us of CPU per request; a Python client "
    "(uvloop, asyncio streams, raw HTTP/1.1 keep-alive, bodies parsed): 53-69 us, start-up "
    "excluded; 3 alternating rounds of 8 s, 64 connections, ~800-980 requests/s each, one API"
)


# --- measuring -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    stored: int
    log_end: int  # records appended to the topic (the sum of its partitions' log ends)
    log_bytes: int
    table_bytes: int
    wal_lsn: int  # asyncpg reads a pg_lsn as the byte position it is


@dataclass
class Probe:
    """What the run reads while it measures, opened once: a connection to the run's database
    (as the schema's owner, who may read the WAL position) and a consumer for the log end.
    Opened beforehand, so that timing the drain does not wait for a client to connect."""

    stack: Stack
    broker: Broker
    connection: asyncpg.Connection
    consumer: AIOKafkaConsumer
    partitions: list[TopicPartition]

    async def log_end(self) -> int:
        return int(sum((await self.consumer.end_offsets(self.partitions)).values()))

    async def stored_position(self) -> int:
        value = await self.connection.fetchval(
            "SELECT coalesce(sum(next_offset), 0) FROM consumer_positions"
            " WHERE group_id = $1 AND topic = $2",
            self.stack.group,
            self.stack.topic,
        )
        return int(value)

    async def drained(self) -> float:
        """time.time() when the group's stored positions first reach the log's end."""
        end = await self.log_end()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while await self.stored_position() < end:
            if time.monotonic() > deadline:
                msg = f"{self.stack.config.name}: not drained within {DRAIN_TIMEOUT_S}s"
                raise SystemExit(msg)
            await asyncio.sleep(POLL_S)
        return time.time()

    async def sizes(self) -> Sizes:
        fetch = self.connection.fetchval
        return Sizes(
            stored=int(await fetch("SELECT count(*) FROM orders")),
            log_end=await self.log_end(),
            log_bytes=topic_log_bytes(self.broker, self.stack.topic),
            table_bytes=int(await fetch("SELECT pg_total_relation_size('orders')")),
            wal_lsn=int(await fetch("SELECT pg_current_wal_lsn()")),
        )


async def record_bytes(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> float:
    """The mean size of a record as produced: key, value, header names and values."""
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    fetched = await consumer.getmany(timeout_ms=5000, max_records=RECORD_SAMPLE)
    records = [record for batch in fetched.values() for record in batch]
    if not records:
        return 0.0
    total = sum(
        len(r.key or b"")
        + len(r.value or b"")
        + sum(len(name.encode()) + len(value) for name, value in r.headers)
        for r in records
    )
    return total / len(records)


async def end_to_end_ms(connection: asyncpg.Connection, since: datetime) -> dict[str, float]:
    row = await connection.fetchrow(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY e) AS p50,"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY e) AS p99, max(e) AS max"
        " FROM (SELECT extract(epoch FROM processed_at - accepted_at) * 1000 AS e"
        "       FROM orders WHERE accepted_at >= $1) AS t",
        since,
    )
    assert row is not None  # an aggregate always returns its one row
    return {name: round(float(row[name] or 0.0), 1) for name in ("p50", "p99", "max")}


async def stored_rows(connection: asyncpg.Connection) -> list[Row]:
    fetched = await connection.fetch(
        "SELECT order_id::text, customer_id, sequence, kafka_partition, kafka_offset FROM orders"
    )
    return [Row(r[0], r[1], r[2], r[3], r[4]) for r in fetched]


def kinds_of(
    api: subprocess.Popen[bytes],
    workers: list[subprocess.Popen[bytes]],
    broker: Broker,
    postmaster: psutil.Process,
    database: str,
) -> list[Kind]:
    return [
        Kind("api", [psutil.Process(api.pid)]),
        Kind("worker", [psutil.Process(w.pid) for w in workers]),
        Kind("broker", [broker.process]),
        Kind("postgres", [postmaster], serves_database(database)),
    ]


async def run_config(
    config: Config, settings: Settings, run: str, logs: Path, token: str
) -> dict[str, Any]:
    stack = Stack(config, run, settings, logs)
    bootstrap_port = int(settings.kafka.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])
    broker = find_broker(bootstrap_port)
    postmaster = find_postmaster(urlsplit(str(settings.database.url)).port or 5432)
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-e2e-{config.name}-"))
    print(f"{config.name}: topic {stack.topic}, database {stack.database}", file=sys.stderr)
    try:
        url = await stack.create()
        port, api, workers = await asyncio.to_thread(stack.start, url)
        async with offsets_consumer(stack.kafka, auto_offset_reset="earliest") as consumer:
            partitions = await topic_partitions(stack.kafka, consumer, stack.topic)
            connection = await asyncpg.connect(stack.owner_url)
            probe = Probe(stack, broker, connection, consumer, partitions)
            try:
                await asyncio.to_thread(
                    generate, port, WARMUP_S, scratch / "warmup-", token, CONNECTIONS
                )
                await probe.drained()
                before = await probe.sizes()
                meter = CpuMeter(kinds_of(api, workers, broker, postmaster, stack.database))
                meter.start()
                began, began_at = time.time(), datetime.now(UTC)
                load = await asyncio.to_thread(
                    generate, port, SECONDS, scratch / "run-", token, CONNECTIONS, RATE
                )
                done_at = await probe.drained()
                cpu, per_process, machine_busy = meter.stop()
                after = await probe.sizes()
                latency = await end_to_end_ms(connection, began_at)
                rows = await stored_rows(connection)
                record = await record_bytes(consumer, partitions)
            finally:
                await connection.close()
        accepted_run = parse_accepted(read_accepted(scratch / "run-"))
        accepted_all = parse_accepted(read_accepted(scratch / "warmup-")) + accepted_run
        verdict = check(accepted_all, rows)
    finally:
        await stack.remove()
        shutil.rmtree(scratch, ignore_errors=True)
    cpu["generator"] = load.cpu_s
    per_process["generator"] = [load.cpu_s]
    stored = after.stored - before.stored
    appended = after.log_end - before.log_end
    wall = done_at - began
    return summarize(
        config=config,
        load=load,
        accepted=len(accepted_run),
        stored=stored,
        wall=wall,
        drain_tail=done_at - load.ended_at,
        latency=latency,
        verdict=verdict.as_json(),
        cpu=cpu,
        per_process=per_process,
        machine_busy=machine_busy,
        bytes_per_order={
            "http_request": load.sent_bytes / max(load.requests, 1),
            "http_response": load.received_bytes / max(load.requests, 1),
            "kafka_record": record,
            "kafka_log": (after.log_bytes - before.log_bytes) / max(appended, 1),
            "postgres_table": (after.table_bytes - before.table_bytes) / max(stored, 1),
            "postgres_wal": (after.wal_lsn - before.wal_lsn) / max(stored, 1),
        },
    )


def summarize(
    *,
    config: Config,
    load: Load,
    accepted: int,
    stored: int,
    wall: float,
    drain_tail: float,
    latency: dict[str, float],
    verdict: dict[str, Any],
    cpu: dict[str, float],
    per_process: dict[str, list[float]],
    machine_busy: float,
    bytes_per_order: dict[str, float],
) -> dict[str, Any]:
    per_order = {kind: used / max(stored, 1) * 1e6 for kind, used in cpu.items()}
    total = sum(per_order.values())
    cores = {kind: used / wall for kind, used in cpu.items()}
    busiest = max(
        ((kind, used / wall) for kind, each in per_process.items() for used in each[:1]),
        key=lambda found: found[1],
    )
    return {
        "config": config.name,
        "api_processes": config.api_processes,
        "workers": config.workers,
        "seconds": round(load.seconds, 2),
        "connections": CONNECTIONS,
        "accepted": accepted,
        "accepted_per_s": round(accepted / load.seconds, 1),
        "http_failures": load.failed,
        "stored": stored,
        "stored_per_s": round(stored / wall, 1),
        "drain_tail_s": round(drain_tail, 3),
        "end_to_end_p50_ms": latency["p50"],
        "end_to_end_p99_ms": latency["p99"],
        "end_to_end_max_ms": latency["max"],
        "http_p50_ms": round(load.p50_ms, 2),
        "http_p90_ms": round(load.p90_ms, 2),
        "http_p99_ms": round(load.p99_ms, 2),
        "http_max_ms": round(load.max_ms, 2),
        "check": verdict,
        "cpu_us_per_order": {kind: round(us, 1) for kind, us in per_order.items()},
        "cpu_us_per_order_total": round(total, 1),
        "cpu_share": {kind: round(us / total, 3) for kind, us in per_order.items()},
        "cores_used": {kind: round(c, 3) for kind, c in cores.items()},
        "cores_used_per_process": {
            kind: [round(used / wall, 3) for used in each] for kind, each in per_process.items()
        },
        "cores_used_pipeline": round(sum(cores.values()), 3),
        "cores_busy_machine": round(machine_busy / wall, 3),
        # The machine's busy CPU that none of the pipeline's processes used: this script, and
        # whatever else ran (on a shared machine, the noise in every other figure).
        "cores_other": round(machine_busy / wall - sum(cores.values()), 3),
        "largest_cpu_share": max(per_order, key=lambda kind: per_order[kind]),
        "busiest_process": {"kind": busiest[0], "cores": round(busiest[1], 3)},
        "bytes_per_order": {name: round(b, 1) for name, b in bytes_per_order.items()},
    }


# --- reporting -----------------------------------------------------------------------------


def table(result: dict[str, Any], cores: int) -> str:
    r, c = result, result["check"]
    verdict = (
        f"ok: {c['accepted']:,} accepted, each stored once, {c['customers']:,} customers in order"
        if c["passed"]
        else f"FAILED: {json.dumps(c)}"
    )
    us, used = r["cpu_us_per_order"], r["cores_used"]
    kinds = list(us)
    size = r["bytes_per_order"]
    lines = [
        f"{r['config']}: {r['api_processes']} API process(es), {r['workers']} worker(s), "
        f"{r['connections']} connections, {r['seconds']:.0f} s",
        f"  accepted       {r['accepted_per_s']:>8,.0f}/s   ({r['accepted']:,} orders, "
        f"{r['http_failures']} failed requests)",
        f"  stored         {r['stored_per_s']:>8,.0f}/s   (first request to last row; "
        f"drain tail {r['drain_tail_s'] * 1000:,.0f} ms after the last 202)",
        f"  end to end     p50 {r['end_to_end_p50_ms']:,.1f} ms, p99 {r['end_to_end_p99_ms']:,.1f}"
        f" ms, max {r['end_to_end_max_ms']:,.1f} ms (accepted_at to processed_at)",
        f"  HTTP           p50 {r['http_p50_ms']:,.1f} ms, p99 {r['http_p99_ms']:,.1f} ms",
        f"  per customer   {verdict}",
        "  CPU            " + "".join(f"{kind:>11}" for kind in kinds) + "      total",
        "    us/order     "
        + "".join(f"{us[k]:>11,.0f}" for k in kinds)
        + f"{r['cpu_us_per_order_total']:>11,.0f}",
        "    share        " + "".join(f"{r['cpu_share'][k]:>11.0%}" for k in kinds) + f"{1:>11.0%}",
        "    cores        "
        + "".join(f"{used[k]:>11.2f}" for k in kinds)
        + f"{r['cores_used_pipeline']:>11.2f}"
        + f"   (machine busy {r['cores_busy_machine']:.2f} of {cores}: "
        f"{r['cores_other']:.2f} other work)",
        f"  bottleneck     {r['largest_cpu_share']} has the largest share of the CPU; the "
        f"busiest process: {r['busiest_process']['kind']} at "
        f"{r['busiest_process']['cores']:.2f} of a core",
        f"  bytes/order    HTTP request {size['http_request']:,.0f}, response "
        f"{size['http_response']:,.0f}; Kafka record {size['kafka_record']:,.0f}, on disk "
        f"{size['kafka_log']:,.0f}; PostgreSQL table {size['postgres_table']:,.0f}, WAL "
        f"{size['postgres_wal']:,.0f}",
    ]
    return "\n".join(lines)


def git_commit() -> str:
    found = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", default=CONFIGS, help=f"default: {CONFIGS}")
    parser.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS}")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: `make deps` installs it")
    configs = parse_configs(args.configs)
    if any(c.api_processes > 1 for c in configs) and not api_supports_workers():
        print("`orders api` has no --workers yet: running 1xN configurations only", file=sys.stderr)
        configs = [c for c in configs if c.api_processes == 1]
    settings = Settings()
    run = secrets.token_hex(3)
    logs = ROOT / ".state" / "bench-e2e" / run
    logs.mkdir(parents=True, exist_ok=True)
    token = local_token(settings.auth, "bench-e2e", ttl_s=86400)
    load_before = os.getloadavg()
    results = [asyncio.run(run_config(c, settings, run, logs, token)) for c in configs]
    cores = psutil.cpu_count() or 0
    for result in results:
        print(table(result, cores), end="\n\n")
    best = max(results, key=lambda r: r["stored_per_s"])
    passed = all(r["check"]["passed"] for r in results)
    summary = {
        "benchmark": "make bench-e2e",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "cores": cores,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "generator": "wrk",
        "generator_note": GENERATOR_NOTE,
        "seconds": SECONDS,
        "connections": CONNECTIONS,
        "paced_rate_per_s": RATE or None,  # None: closed loop
        "partitions": settings.kafka.partitions,
        "replication_factor": settings.kafka.replication_factor,
        "configs": results,
        "best": best["config"],
        "passed": passed,
    }
    print(json.dumps(summary))
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    if passed:
        shutil.rmtree(logs, ignore_errors=True)
    else:
        print(f"the per-customer check FAILED; the processes' logs are in {logs}", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""What SASL_SSL (TLS + SCRAM-SHA-512) costs the API's producer, against PLAINTEXT.

Starts a throwaway broker of each kind in turn (the code of `make up` and `KAFKA_SECURITY=sasl_ssl
make up`, on ports 19692/19792, under a temporary folder), and sends the same records through the
API's own path (app.publisher.build_producer + app.batching.PartitionBatches) to each: 16 records
in each of 6 partitions' batches per produce request (a busy API), then 1 record per request (an
idle one). Prints the Python process's CPU per record and per request, and what connecting cost.

    .venv/bin/python scripts/bench/kafka_security_costs.py [records, default 12000]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.producer_costs import HEADERS, VALUE, produce_rounds
from local_services.kafka import kafka_down, kafka_up
from local_services.kafka_security import AclScope, read_credentials

from app.batching import PartitionBatches
from app.publisher import build_producer, close_producer
from app.settings import KafkaSettings
from app.topics import ensure_topics

TOPIC = "bench-orders"


def credentials(folder: Path, principal: str, bootstrap: str) -> KafkaSettings:
    values = {"bootstrap_servers": bootstrap}
    for name, value in read_credentials(folder / "credentials" / f"{principal}.env").items():
        values[name.removeprefix("KAFKA_").lower()] = value
    return KafkaSettings(**values, orders_topic=TOPIC, dlq_topic=f"{TOPIC}.DLQ")  # type: ignore[arg-type]


async def measure(api: KafkaSettings, records: int) -> dict[str, float]:
    producer = build_producer(api)
    started = time.process_time()
    await producer.start()
    batches = PartitionBatches(producer, TOPIC)
    # The first append fetches the topic's metadata; count it with connecting.
    await asyncio.gather(*(batches.append(p, b"key", VALUE, HEADERS) for p in range(6)))
    result = {"connect_ms": (time.process_time() - started) * 1e3}
    try:
        for label, per_batch, partitions in (("busy", 16, 6), ("idle", 1, 1)):
            requests = max(records // (per_batch * partitions), 1)
            cpu = await produce_rounds(batches, requests, per_batch, partitions)
            result[f"{label}_us_per_record"] = cpu / (requests * per_batch * partitions) * 1e6
            result[f"{label}_us_per_request"] = cpu / requests * 1e6
    finally:
        await batches.close()
        await close_producer(producer, 5.0)
    return result


def run(security: str, base_port: int, records: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"bench-kafka-{security}-") as folder:
        root = Path(folder)
        scope = AclScope(TOPIC, f"{TOPIC}.DLQ", "bench-workers")
        bootstrap = kafka_up(1, base_port, root / "cluster", security=security, acl_scope=scope)
        try:
            asyncio.run(ensure_topics(credentials(root, "orders-operator", bootstrap)))
            return uvloop.run(measure(credentials(root, "orders-api", bootstrap), records))
        finally:
            kafka_down(root)


def main() -> None:
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 12_000
    results = {
        "PLAINTEXT": run("plaintext", 19692, records),
        "SASL_SSL": run("sasl_ssl", 19792, records),
    }
    print(f"\n{records} records of {len(VALUE)} bytes, lz4, through PartitionBatches")
    print(f"{'':10} {'connect':>10} {'busy: per record':>18} {'idle: per record':>18}")
    for name, r in results.items():
        print(
            f"{name:10} {r['connect_ms']:8.1f}ms {r['busy_us_per_record']:16.1f}us "
            f"{r['idle_us_per_record']:16.1f}us"
        )
    plain, secured = results["PLAINTEXT"], results["SASL_SSL"]
    for label in ("busy", "idle"):
        extra = secured[f"{label}_us_per_record"] - plain[f"{label}_us_per_record"]
        print(f"SASL_SSL adds {extra:+.1f} us per record ({label})")


if __name__ == "__main__":
    main()

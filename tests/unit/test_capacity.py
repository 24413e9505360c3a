"""The capacity model's arithmetic (scripts/bench/capacity.py), from a small benchmark JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

import capacity  # noqa: E402

from app.settings import KafkaSettings  # noqa: E402
from app.topics import topic_configs  # noqa: E402


def config(name: str, stored_per_s: float, api_us: float) -> dict[str, Any]:
    return {
        "config": name,
        "stored_per_s": stored_per_s,
        "cpu_us_per_order": {
            "api": api_us,
            "worker": 50.0,
            "broker": 60.0,
            "postgres": 40.0,
            "generator": 20.0,
        },
        "bytes_per_order": {
            "http_request": 500.0,
            "http_response": 120.0,
            "kafka_record": 400.0,
            "kafka_log": 200.0,
            "postgres_table": 600.0,
            "postgres_wal": 1000.0,
        },
    }


RESULTS = {
    "measured_at": "2026-01-01T00:00:00+00:00",
    "commit": "abc1234",
    # The best configuration (most stored per second) is the model's source, wherever it is.
    "configs": [config("2x2", 3500.0, 300.0), config("1x2", 4000.0, 250.0)],
}
# Round numbers: half of each core, 8-core brokers, three replicas, a week's retention.
ASSUMPTIONS = capacity.Assumptions(
    utilisation=0.5,
    replication_factor=3,
    min_replicas=2,
    partition_headroom=2,
    broker_cores=8,
    postgres_max_cores=64,
    postgres_max_wal_bytes_per_s=200e6,
    postgres_max_storage_bytes=10e12,
    postgres_history_days=365,
    retention_s=7 * 86_400,
)


@pytest.fixture
def measured() -> capacity.Measured:
    return capacity.measured_from(RESULTS)


def test_the_best_configuration_is_the_source(measured: capacity.Measured) -> None:
    assert measured.api_us == 250.0
    assert measured.stored_per_s == 4000.0
    assert "1x2" in measured.source
    assert measured.per_api_core == 4000.0
    assert measured.per_worker == 20_000.0


def test_ten_thousand_orders_per_second(measured: capacity.Measured) -> None:
    plan = capacity.plan(measured, 10_000, ASSUMPTIONS)
    assert plan.api_processes == 5  # 10,000 x 250 us = 2.5 cores, at half each
    assert plan.workers == 2  # 10,000 x 50 us = 0.5 cores: 1, but never fewer than 2
    assert plan.partitions == 4
    assert plan.broker_cores == pytest.approx(3.6)  # 60 us x 3 replicas, at half
    assert plan.brokers == 3  # the replication factor's minimum
    assert plan.postgres_cores == pytest.approx(0.8)
    assert plan.postgres_rows_per_s == 10_000
    assert plan.postgres_wal_bytes_per_s == pytest.approx(10e6)
    assert plan.postgres_bytes_per_day == pytest.approx(10_000 * 600 * 86_400)
    assert plan.postgres_days_to_fill == pytest.approx(10e12 / (10_000 * 600 * 86_400))  # ~19
    assert plan.http_bytes_per_s == pytest.approx(5e6)
    assert plan.kafka_produce_bytes_per_s == pytest.approx(2e6)
    assert plan.kafka_disk_bytes_per_day == pytest.approx(10_000 * 200 * 3 * 86_400)
    assert plan.kafka_disk_bytes_at_retention == pytest.approx(7 * plan.kafka_disk_bytes_per_day)


def test_a_hundred_thousand_orders_per_second(measured: capacity.Measured) -> None:
    plan = capacity.plan(measured, 100_000, ASSUMPTIONS)
    assert plan.api_processes == 50
    assert plan.workers == 10
    assert plan.partitions == 20
    assert plan.broker_cores == pytest.approx(36.0)
    assert plan.brokers == 5  # 36 cores busy on 8-core brokers


def test_limits_lowest_first_and_where_it_stops(measured: capacity.Measured) -> None:
    limits = capacity.limits(measured, ASSUMPTIONS)
    by_name = {limit.resource: limit.orders_per_s for limit in limits}
    assert by_name["one customer (one partition)"] == pytest.approx(10_000)  # 20,000 at half
    assert by_name["one PostgreSQL primary: CPU"] == pytest.approx(800_000)  # 64 x 0.5 / 40 us
    assert by_name["one PostgreSQL primary: WAL"] == pytest.approx(100_000)  # 100 MB/s / 1 kB
    # A year of 600-byte rows in 10 TB: ~528 orders/s, held all day.
    assert by_name["one PostgreSQL primary: storage"] == pytest.approx(10e12 / (600 * 86_400 * 365))
    assert math.isinf(by_name["API processes"])
    assert [limit.orders_per_s for limit in limits] == sorted(by_name.values())
    stop = capacity.first_aggregate_limit(measured, ASSUMPTIONS)
    assert stop.resource == "one PostgreSQL primary: storage"


def test_markdown_table(measured: capacity.Measured) -> None:
    table = capacity.markdown_report(measured, ASSUMPTIONS)
    assert "| | 1,000 orders/s | 10,000 orders/s | 100,000 orders/s |" in table
    assert "| API processes (1 core each) | 2 | 5 | 50 |" in table
    assert "| partitions | 4 | 4 | 20 |" in table
    assert "| days to fill 10.0 TB of PostgreSQL | 193 | 19 | 2 |" in table
    assert "**one PostgreSQL primary: storage**, about 528 orders/s" in table


def test_retention_comes_from_the_topics_configs() -> None:
    configs = topic_configs(KafkaSettings())
    expected = int(configs.get("retention.ms", capacity.KAFKA_DEFAULT_RETENTION_MS)) / 1000
    assert capacity.retention_s_of_topics() == expected


def test_command_reads_a_results_file(tmp_path: Path) -> None:
    source = tmp_path / "e2e.json"
    source.write_text(json.dumps(RESULTS))
    shown = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench" / "capacity.py"), "--from", str(source)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert "It stops scaling first at:" in shown.stdout
    assert "1x2 of `make bench-e2e`" in shown.stdout

"""Monitoring as code, checked without services: the rules are all tested, the alerts page in
time and say what to run, the dashboard is its generator's output, and the two scrape configs
(compose's, `MONITORING=1 make run`'s) name the jobs the rules and panels expect.

`promtool test rules` runs the rule tests themselves (`make test`); `make lint` runs `promtool
check rules` and `promtool check config`; tests/integration/test_dashboard_metrics.py holds every
queried name against live /metrics pages.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring_queries import (
    MONITORING,
    ROOT,
    RULE_TESTS,
    dashboard,
    dashboard_expressions,
    exported_names,
    load_yaml,
    metric_names,
    recorded,
    rule_expressions,
    rules,
)

sys.path.insert(0, str(ROOT / "scripts"))

from monitoring_tools import dashboard as dashboard_generator
from monitoring_tools import local_prometheus

COMPOSE_PROMETHEUS = MONITORING / "prometheus" / "prometheus.yml"
GRAFANA = MONITORING / "grafana"
JOBS = {"orders-api", "orders-worker"}


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)(ms|s|m|h)", duration)
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(int(number) * units[unit] for number, unit in parts)


def alert_tests() -> list[dict[str, Any]]:
    cases = []
    for path in RULE_TESTS:
        for test in load_yaml(path)["tests"]:
            cases += test.get("alert_rule_test", [])
    return cases


def expression_tests() -> list[dict[str, Any]]:
    cases = []
    for path in RULE_TESTS:
        for test in load_yaml(path)["tests"]:
            cases += test.get("promql_expr_test", [])
    return cases


# --- the metric-name extraction the dashboard test relies on ---


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        (
            'sum by (topic) (rate(orders_producer_records_total{topic="a b"}[$__rate_interval]))',
            {"orders_producer_records_total"},
        ),
        (
            "histogram_quantile(0.99, sum by (route, le) "
            "(rate(orders_http_request_duration_seconds_bucket[5m])))",
            {"orders_http_request_duration_seconds_bucket"},
        ),
        ("count(up{job='orders-worker'} == 1) or vector(0)", {"up"}),
        (
            "orders:worker_group_members < orders:worker_group_expected_members",
            {"orders:worker_group_members", "orders:worker_group_expected_members"},
        ),
        (
            "deriv(orders:partition_lag_records:max[5m]) > 0 and on() x_total offset 1h",
            {"orders:partition_lag_records:max", "x_total"},
        ),
        (
            "sum(rate(a_total[1m])) by (le) / ignoring(le) group_left b_count",
            {"a_total", "b_count"},
        ),
        ("1 - orders_worker_ready", {"orders_worker_ready"}),
        ('absent(up{job="orders-api", route!~"/healthz|/readyz"})', {"up"}),
        ("max_over_time(x_seconds[1h:5m]) > 1e3", {"x_seconds"}),
    ],
)
def test_metric_names_are_what_an_expression_reads(expression: str, names: set[str]) -> None:
    assert metric_names(expression) == names


def test_recorded_series_resolve_to_what_their_rules_read() -> None:
    names = exported_names(["orders:partition_lag_records:deriv5m > 0"])
    assert names == {"orders_consumer_lag_records"}
    assert exported_names(["orders:worker_group_members"]) == set(), "`up` is Prometheus' own"


def test_every_series_queried_is_a_contract_name_or_a_recorded_one() -> None:
    """`orders_` names only (tests/integration/test_dashboard_metrics.py says which exist);
    recorded names are the rules' own."""
    records = recorded()
    for expression in [*dashboard_expressions(), *rule_expressions()]:
        for name in metric_names(expression):
            assert name.startswith("orders_") or name in records or name == "up", name
    assert all(name.startswith("orders:") for name in records), sorted(records)


# --- the rules and their tests ---


def test_every_alert_fires_in_a_test_and_stays_quiet_in_another() -> None:
    cases = alert_tests()
    for rule in rules("alert"):
        name = rule["alert"]
        fired = [case for case in cases if case["alertname"] == name and case["exp_alerts"]]
        quiet = [case for case in cases if case["alertname"] == name and not case["exp_alerts"]]
        assert fired, f"{name}: no promtool test where it fires"
        assert quiet, f"{name}: no promtool test where it stays quiet"


def test_every_recording_rule_is_checked_by_a_test() -> None:
    tested = set()
    for case in expression_tests():
        tested |= metric_names(case["expr"])
        assert case["exp_samples"], f"{case['expr']}: a test that expects nothing checks nothing"
    assert set(recorded()) <= tested, sorted(set(recorded()) - tested)


def test_the_rule_tests_load_every_rule_file() -> None:
    files = {path.name for path in (MONITORING / "prometheus" / "rules").glob("*.yml")}
    for path in RULE_TESTS:
        loaded = {Path(name).name for name in load_yaml(path)["rule_files"]}
        assert loaded <= files, path
    loaded_by_alert_tests = {
        Path(name).name
        for path in RULE_TESTS
        if "alert" in path.name
        for name in load_yaml(path)["rule_files"]
    }
    assert loaded_by_alert_tests == files, "the alerts read recorded series: load both"


def test_each_alert_tells_the_operator_what_to_run() -> None:
    for rule in rules("alert"):
        name, annotations = rule["alert"], rule.get("annotations", {})
        assert set(annotations) >= {"summary", "description"}, name
        assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, name
        commands = re.findall(r"`([^`]+)`", annotations["description"])
        assert commands, f"{name}: the description names no command to run"
        assert any(c.split()[0] in {"orders", "docker", "make"} for c in commands), commands


def test_a_stall_shows_as_an_alert_within_a_minute_of_detection() -> None:
    """Worst case after the worker sets orders_partition_stalled: one scrape interval until it
    is scraped, one evaluation interval until the rule sees it, then `for:`."""
    [stalled] = [rule for rule in rules("alert") if rule["alert"] == "OrdersPartitionStalled"]
    assert metric_names(stalled["expr"]) == {"orders_partition_stalled"}
    evaluation = seconds(stalled["group"]["interval"])
    for scrape_interval in scrape_intervals():
        worst = scrape_interval + evaluation + seconds(stalled.get("for", "0s"))
        assert worst <= 60, f"{worst}s"


def test_the_expected_group_size_is_one_constant() -> None:
    expected = [
        rule for rule in rules("record") if rule["record"] == "orders:worker_group_expected_members"
    ]
    assert len(expected) == 1
    assert re.fullmatch(r"vector\(\d+\)", expected[0]["expr"].strip())
    uses = [rule["alert"] for rule in rules("alert") if "expected_members" in rule["expr"]]
    assert uses == ["OrdersWorkerGroupBelowExpectedSize"]


# --- the scrape configs: compose's and `MONITORING=1 make run`'s ---


def scrape_intervals() -> list[float]:
    compose = load_yaml(COMPOSE_PROMETHEUS)["global"]
    local = local_prometheus.config("127.0.0.1:8000", ["127.0.0.1:9100"])["global"]
    assert isinstance(local, dict)
    return [seconds(compose["scrape_interval"]), seconds(local["scrape_interval"])]


def jobs_of(configuration: dict[str, Any]) -> set[str]:
    return {job["job_name"] for job in configuration["scrape_configs"]}


def test_both_scrape_configs_have_the_jobs_the_rules_name() -> None:
    named = set()
    for expression in rule_expressions():
        named |= set(re.findall(r'job="([^"]+)"', expression))
    assert named == JOBS
    assert jobs_of(load_yaml(COMPOSE_PROMETHEUS)) == JOBS
    assert jobs_of(local_prometheus.config("127.0.0.1:8000", ["127.0.0.1:9100"])) == JOBS
    assert load_yaml(COMPOSE_PROMETHEUS)["rule_files"] == ["rules/*.yml"]


def test_the_local_config_scrapes_the_api_and_each_worker_port(tmp_path: Path) -> None:
    ports = local_prometheus.worker_ports(3, 9100)
    assert ports == [9100, 9101, 9102]
    assert local_prometheus.worker_ports(2, 0) == [0, 0], "0: no metrics server, for each"
    assert local_prometheus.target("0.0.0.0", 8000) == "127.0.0.1:8000"
    workers = [local_prometheus.target("127.0.0.1", port) for port in ports]
    path = local_prometheus.write_config(tmp_path / "p.yml", "127.0.0.1:8000", workers)
    written = yaml.safe_load(path.read_text())  # JSON, which YAML (and Prometheus) reads
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in written["scrape_configs"]
    }
    assert targets == {
        "orders-api": ["127.0.0.1:8000"],
        "orders-worker": ["127.0.0.1:9100", "127.0.0.1:9101", "127.0.0.1:9102"],
    }
    [rule_files] = written["rule_files"]
    assert sorted(Path(rule_files).parent.glob(Path(rule_files).name)) == sorted(
        (MONITORING / "prometheus" / "rules").glob("*.yml")
    )


# --- the dashboard ---


def test_the_committed_dashboard_is_the_generators_output() -> None:
    committed = dashboard_generator.OUTPUT.read_text()
    assert committed == dashboard_generator.render(), (
        "run .venv/bin/python scripts/monitoring_tools/dashboard.py"
    )


def test_the_dashboard_has_the_courses_panels() -> None:
    titles = {panel["title"] for panel in dashboard()["panels"]}
    course = {
        "Send rate",
        "Batch size",
        "Error rate",
        "Request latency (p99)",
        "Lag per partition",
        "Processing rate",
        "Commit rate",
        "Rebalances",
        "End-to-end latency",
        "Stalls",
        "503s by reason",
        "Records set aside",
    }
    assert course <= titles, sorted(course - titles)


def test_every_panel_queries_the_provisioned_data_source() -> None:
    [source] = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    panels = [panel for panel in dashboard()["panels"] if panel["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"] == {"type": source["type"], "uid": source["uid"]}, panel
        assert panel["targets"], panel["title"]
    ids = [panel["id"] for panel in dashboard()["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"


def test_grafana_loads_the_dashboard_folder_compose_mounts() -> None:
    [provider] = load_yaml(GRAFANA / "provisioning" / "dashboards" / "orders.yml")["providers"]
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["grafana"]
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in compose["volumes"] if volume[0] == ".")
    assert mounts["./monitoring/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = compose["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{dashboard_generator.OUTPUT.name}"
    assert json.loads(dashboard_generator.OUTPUT.read_text())["uid"] == "orders"

"""What the monitoring code queries: the metric names in the dashboard's and the rules' PromQL.

Not a PromQL parser: the expressions here are the project's own (the dashboard's generator and
monitoring/prometheus/rules), and what is left of one once string literals, label matchers,
ranges, grouping clauses and numbers are gone is names: those followed by `(` are functions or
aggregations, a few are keywords, the rest are series. tests/unit/test_monitoring_rules.py pins
this on examples of every construct the project uses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "monitoring"
RULES = sorted((MONITORING / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((MONITORING / "prometheus" / "tests").glob("*.yml"))
DASHBOARD = MONITORING / "grafana" / "dashboards" / "orders.json"

_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_VARIABLES = re.compile(r"\$\{?\w+\}?")  # Grafana's $__rate_interval, ${var}
_NUMBERS = re.compile(r"(?<![\w:])(?:0x[0-9a-fA-F]+|\d[\w.]*(?:[eE][+-]?\d+)?)")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "atan2"}
    | {"group_left", "group_right", "inf", "nan", "Inf", "NaN", "start", "end"}
)


def metric_names(expression: str) -> set[str]:
    """The series names an expression reads (recorded ones included, as written)."""
    text = _STRINGS.sub(" ", expression)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _VARIABLES.sub(" ", text)
    text = _NUMBERS.sub(" ", text)
    names = set()
    for match in _NAME.finditer(text):
        name = match.group(0)
        followed_by_call = text[match.end() :].lstrip().startswith("(")
        if not followed_by_call and name not in _KEYWORDS:
            names.add(name)
    return names


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules(kind: str) -> Iterator[dict[str, Any]]:
    """Every rule of monitoring/prometheus/rules of one kind: "record" or "alert"."""
    for path in RULES:
        for group in load_yaml(path)["groups"]:
            for rule in group["rules"]:
                if kind in rule:
                    yield {**rule, "group": group}


def recorded() -> dict[str, str]:
    """Recorded series name -> its expression."""
    return {rule["record"]: rule["expr"] for rule in rules("record")}


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def dashboard_expressions() -> list[str]:
    expressions = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets") or []:
            expressions.append(target["expr"])
    return expressions


def rule_expressions() -> list[str]:
    return [rule["expr"] for rule in (*rules("record"), *rules("alert"))]


def exported_names(expressions: Iterable[str]) -> set[str]:
    """The metric names the services must export for these expressions: recorded series are
    replaced by what their rule reads, `up` (Prometheus' own) is left out."""
    records = recorded()
    pending = [name for expression in expressions for name in metric_names(expression)]
    seen: set[str] = set()
    names: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in records:
            pending.extend(metric_names(records[name]))
        elif name != "up":
            names.add(name)
    return names

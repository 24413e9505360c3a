"""The lean counter and histogram expose exactly what prometheus-client's own would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from app.api.metrics import SECONDS_BUCKETS
from app.observability.lean import LeanCounter, LeanHistogram


def test_the_same_updates_give_the_same_prometheus_text() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    histograms = [
        Histogram("t_seconds", "doc", ["route"], buckets=SECONDS_BUCKETS, registry=theirs),
        LeanHistogram("t_seconds", "doc", ["route"], buckets=SECONDS_BUCKETS, registry=ours),
    ]
    counters = [
        Counter("t_total", "doc", ["route", "status"], registry=theirs),
        LeanCounter("t_total", "doc", ["route", "status"], registry=ours),
    ]
    plain = [
        Histogram("p", "doc", buckets=(1, 2), registry=theirs),
        LeanHistogram("p", "doc", buckets=(1, 2), registry=ours),
    ]
    # On a bound, between bounds, below the first, above the last.
    for amount in (0.0005, 0.001, 0.0011, 0.3, 10.0, 11.0):
        for histogram in histograms:
            histogram.labels("/orders").observe(amount)
        for histogram in plain:
            histogram.observe(amount)
    for counter in counters:
        counter.labels("/orders", "202").inc()
        counter.labels("/orders", "202").inc(3)
        counter.labels("/orders", "503").inc()
    text = generate_latest(ours).decode()
    # prometheus-client's in-memory classes add a <name>_created series; the API turns it off.
    expected = "\n".join(
        line for line in generate_latest(theirs).decode().splitlines() if "_created" not in line
    )
    assert text.strip() == expected.strip()
    assert 't_seconds_bucket{le="0.001",route="/orders"} 2.0' in text
    assert 't_seconds_bucket{le="+Inf",route="/orders"} 6.0' in text
    assert 't_total{route="/orders",status="202"} 4.0' in text

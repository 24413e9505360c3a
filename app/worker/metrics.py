"""The worker's Prometheus metrics: names and labels are the operator contract (dashboards and
alerts are written against them), so they are spelled here once and nowhere else.

One worker is one process, so one registry per process (the default one) and no multiprocess
mode. `worker_metrics(enabled=False)` returns `NoMetrics`, whose methods do nothing: the
benchmark compares the two paths, and METRICS_ENABLED=false costs one method call per batch.

Costs on the hot path are per batch, not per order: label children are resolved once per
partition and kept. The one per-order update, the end-to-end histogram, is a LeanHistogram
(app/observability/lean.py) fed a whole batch at once: prometheus-client's `observe` (a lock and
a bucket search, ~1 us) per order would alone add 3% to the worker's ~36 us per stored order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from datetime import datetime

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from app.observability.lean import LeanHistogram
from app.worker.batch_writer import BatchOutcome
from app.worker.fetch_positions import Batch
from app.worker.order_store import IncomingOrder

BATCH_RECORDS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
TRANSACTION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20)
END_TO_END_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class NoMetrics:
    """METRICS_ENABLED=false: every call does nothing (and nothing is registered)."""

    enabled = False

    def fetched(self, batch: Batch) -> None:
        pass

    def batch_written(self, outcome: BatchOutcome, seconds: float, committed_at: datetime) -> None:
        pass

    def batch_retried(self) -> None:
        pass

    def backing_off(self, on: bool) -> None:
        pass

    def kafka_commit(self, ok: bool) -> None:
        pass

    def rebalanced(self, event: str, owned: int) -> None:
        pass

    def partition_status(
        self, partition: int, *, lag: int, stalled: bool, lag_growing: bool
    ) -> None:
        pass

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        pass

    def ready(self, ready: bool) -> None:
        pass


class WorkerMetrics(NoMetrics):
    """The contract's worker metrics, registered in `registry` (the process's default one)."""

    enabled = True

    def __init__(self, topic: str, registry: CollectorRegistry = REGISTRY) -> None:
        self._topic = topic
        partition = ["topic", "partition"]
        self._fetched = Counter(
            "orders_worker_records_fetched",
            "Records handed to batches",
            partition,
            registry=registry,
        )
        self._stored = Counter(
            "orders_stored", "Orders newly inserted (redeliveries not counted)", registry=registry
        )
        self._duplicates = Counter(
            "orders_duplicates_absorbed",
            "Orders of a batch that were stored already (redeliveries)",
            registry=registry,
        )
        self._dead_lettered = Counter(
            "orders_dead_lettered", "Records sent to the DLQ topic", registry=registry
        )
        self._quarantined = Counter(
            "orders_quarantined", "Records kept in PostgreSQL's quarantine table", registry=registry
        )
        self._expired = Counter(
            "orders_expired",
            "Records appended after their acceptance deadline (discarded by contract)",
            registry=registry,
        )
        self._fenced = Counter(
            "orders_fenced",
            "Partition-batches dropped because another member had moved the position on",
            registry=registry,
        )
        self._skipped = Counter(
            "orders_skipped_offsets",
            "Offsets passed with no record (markers, aborted transactions)",
            registry=registry,
        )
        self._batch_records = Histogram(
            "orders_worker_batch_records",
            "Records per batch transaction",
            buckets=BATCH_RECORDS_BUCKETS,
            registry=registry,
        )
        self._transaction = Histogram(
            "orders_worker_transaction_seconds",
            "One batch's PostgreSQL transaction",
            buckets=TRANSACTION_BUCKETS,
            registry=registry,
        )
        self._retries = Counter(
            "orders_worker_batch_retries",
            "Batches that failed and are retried after a back-off",
            registry=registry,
        )
        self._backing_off = Gauge(
            "orders_worker_backing_off",
            "1 while the member is paused for a back-off",
            registry=registry,
        )
        self._commits = Counter(
            "orders_kafka_commits",
            "Successful Kafka offset commits (mirror of the PostgreSQL positions)",
            registry=registry,
        )
        self._commit_failures = Counter(
            "orders_kafka_commit_failures", "Failed Kafka offset commits", registry=registry
        )
        self._rebalances = Counter(
            "orders_worker_rebalances",
            "Rebalance callbacks, by event (assigned, revoked)",
            ["event"],
            registry=registry,
        )
        self._assigned = Gauge(
            "orders_worker_assigned_partitions",
            "Partitions of the orders topic this member owns",
            registry=registry,
        )
        self._lag = Gauge(
            "orders_consumer_lag_records",
            "Log end (last stable offset) minus the position stored in PostgreSQL",
            partition,
            registry=registry,
        )
        self._stalled = Gauge(
            "orders_partition_stalled",
            "1 while the partition is STALLED or STOPPED",
            partition,
            registry=registry,
        )
        self._lag_growing = Gauge(
            "orders_partition_lag_growing",
            "1 while WARNING (lag grew at every sample of the window)",
            partition,
            registry=registry,
        )
        self._end_to_end = LeanHistogram(
            "orders_end_to_end_seconds",
            "From accepted_at (API) to the stored row's commit; newly stored orders only",
            buckets=END_TO_END_BUCKETS,
            registry=registry,
        ).labels()
        self._ready = Gauge("orders_worker_ready", "1 while /readyz answers 200", registry=registry)
        for event in ("assigned", "revoked"):
            self._rebalances.labels(event)  # both series exist from the start, at 0
        self._fetched_by_partition: dict[int, Counter] = {}

    def fetched(self, batch: Batch) -> None:
        children = self._fetched_by_partition
        for tp, records in batch.items():
            child = children.get(tp.partition)
            if child is None:
                child = children[tp.partition] = self._fetched.labels(tp.topic, str(tp.partition))
            child.inc(len(records))

    def batch_written(self, outcome: BatchOutcome, seconds: float, committed_at: datetime) -> None:
        """One batch transaction that committed; `committed_at` is the wall clock just after."""
        self._transaction.observe(seconds)
        self._fenced.inc(len(outcome.fenced))
        written = outcome.written
        if written is None or not written.spans:
            return
        self._batch_records.observe(
            len(written.orders) + len(written.poison) + len(written.expired)
        )
        if outcome.inserted:
            self._stored.inc(outcome.inserted)
            self._end_to_end.observe_many(_ages(outcome.stored, committed_at))
        if outcome.duplicates:
            self._duplicates.inc(outcome.duplicates)
        if outcome.dead_lettered:
            self._dead_lettered.inc(outcome.dead_lettered)
        if outcome.quarantined:
            self._quarantined.inc(outcome.quarantined)
        if written.expired:
            self._expired.inc(len(written.expired))
        if outcome.skipped_offsets:
            self._skipped.inc(outcome.skipped_offsets)

    def batch_retried(self) -> None:
        self._retries.inc()

    def backing_off(self, on: bool) -> None:
        self._backing_off.set(1 if on else 0)

    def kafka_commit(self, ok: bool) -> None:
        (self._commits if ok else self._commit_failures).inc()

    def rebalanced(self, event: str, owned: int) -> None:
        self._rebalances.labels(event).inc()
        self._assigned.set(owned)

    def partition_status(
        self, partition: int, *, lag: int, stalled: bool, lag_growing: bool
    ) -> None:
        labels = (self._topic, str(partition))
        self._lag.labels(*labels).set(lag)
        self._stalled.labels(*labels).set(1 if stalled else 0)
        self._lag_growing.labels(*labels).set(1 if lag_growing else 0)

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """No longer ours: their lag is another member's to report (two would double it)."""
        for partition in partitions:
            labels = (self._topic, str(partition))
            for gauge in (self._lag, self._stalled, self._lag_growing):
                with contextlib.suppress(KeyError):  # never reported by this member
                    gauge.remove(*labels)

    def ready(self, ready: bool) -> None:
        self._ready.set(1 if ready else 0)


def _ages(orders: Sequence[IncomingOrder], committed_at: datetime) -> list[float]:
    return [(committed_at - order.envelope.accepted_at).total_seconds() for order in orders]


def worker_metrics(enabled: bool, topic: str, registry: CollectorRegistry = REGISTRY) -> NoMetrics:
    """The process's metrics: live ones, or the no-op kind when METRICS_ENABLED=false."""
    if not enabled:
        return NoMetrics()
    # No `<name>_created` series beside each counter and histogram (the client's default):
    # Prometheus ingests each as a series of its own, doubling them for nothing (as the API).
    disable_created_metrics()  # type: ignore[no-untyped-call]
    return WorkerMetrics(topic, registry)

"""A counter and a histogram for the hot paths of one event-loop thread: plain numbers, turned
into Prometheus samples only when scraped.

prometheus-client's `inc()` and `observe()` go through four or five Python calls and a lock
each (~4,600 and ~9,000 CPU instructions, counted with callgrind); the API makes five such
updates per accepted order. With them, the API's CPU per order was 7% above the same API with
METRICS_ENABLED=false, measured side by side at ~700 orders/s (where each request meets cold
caches); with these, 2-3% (scripts/bench/ingress.py --compare metrics). Here an update is one
attribute add (a histogram: a bisection too). No lock: the API and the worker update them from
their event loop only, and /metrics is rendered on that same thread.

In memory only: in multiprocess mode (app/observability/exposition.py) each value must live in
the process's mmap file, so there the API uses prometheus-client's own classes, which have the
same `labels()`, `inc()` and `observe()`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class LeanCounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class LeanHistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # The first bound >= amount: Prometheus's buckets are "less than or equal".
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount

    def observe_many(self, amounts: Iterable[float]) -> None:
        """A batch of observations (the worker's end-to-end latencies, one per stored order)."""
        counts, bounds, total = self.counts, self.bounds, 0.0
        for amount in amounts:
            counts[bisect_left(bounds, amount)] += 1
            total += amount
        self.sum += total


class LeanCounter:
    """prometheus_client.Counter's `labels()` and `inc()`, for one thread."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self.name = name.removesuffix("_total")  # as Counter: the family has no _total
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], LeanCounterChild] = {}
        if not self.labelnames:
            self._children[()] = LeanCounterChild()
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> LeanCounterChild:
        child = self._children.get(values)
        if child is None:
            assert len(values) == len(self.labelnames), (self.name, values)
            child = self._children[values] = LeanCounterChild()
        return child

    def inc(self, amount: float = 1.0) -> None:
        self._children[()].inc(amount)

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(values, child.value)
        yield family


class LeanHistogram:
    """prometheus_client.Histogram's `labels()` and `observe()`, for one thread."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],  # finite upper bounds; +Inf is implied
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(float(bound) for bound in buckets)
        self._children: dict[tuple[str, ...], LeanHistogramChild] = {}
        if not self.labelnames:
            self._children[()] = LeanHistogramChild(self.bounds)
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> LeanHistogramChild:
        child = self._children.get(values)
        if child is None:
            assert len(values) == len(self.labelnames), (self.name, values)
            child = self._children[values] = LeanHistogramChild(self.bounds)
        return child

    def observe(self, amount: float) -> None:
        self._children[()].observe(amount)

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        for values, child in self._children.items():
            cumulative, buckets = 0, []
            for edge, count in zip(edges, child.counts, strict=True):
                cumulative += count
                buckets.append((edge, float(cumulative)))
            family.add_metric(list(values), buckets, child.sum)
        yield family

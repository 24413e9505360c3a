"""Requests by route and status, their duration, and those in flight: an ASGI middleware.

The outermost of the app's middlewares, so the refusals of the ones inside it (the in-flight
cap's 503, the guard's 413 and 415) are counted like any answer. What the HTTP edge refuses
before the app (app/api/edge_protocol.py) is counted there, in orders_http_edge_refusals_total.

The route label is the matched route's path template, which the router leaves in
scope["route"]: "/orders/{order_id}" (`path_format`, without the converter), never the raw path.
A request answered before routing (a refusal) has no route: its path is matched against the
app's route templates then, which costs a few regex matches, on refusals only. A 404 without a
route is "unmatched" at once: an unknown path needs no matching, and a flood of them stays cheap.

Per request: two clock reads, two dict look-ups for label children resolved once per (route,
status) and kept (both sets are bounded), one closure for `send`. The in-flight gauge, in memory,
reads a plain count when scraped: updating it twice per request was a quarter of what this
middleware cost (counted in instructions). In multiprocess mode each process must write its
count to its file, so there the gauge is updated as requests come and go. Not installed when
METRICS_ENABLED=false.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from time import perf_counter
from typing import Any

from prometheus_client import Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.metrics import (
    HTTP_IN_FLIGHT,
    HTTP_REQUEST_DURATION,
    HTTP_REQUESTS,
    UNMATCHED,
    CounterChild,
    HistogramChild,
)
from app.observability import multiprocess_dir


class _RouteSeries:
    """One route's label children: its duration histogram, and a counter per status."""

    __slots__ = ("by_status", "duration", "route")

    def __init__(self, route: str) -> None:
        self.route = route
        self.duration: HistogramChild = HTTP_REQUEST_DURATION.labels(route)
        self.by_status: dict[int, CounterChild] = {}

    def answered(self, status: int, seconds: float) -> None:
        counter = self.by_status.get(status)
        if counter is None:
            counter = self.by_status[status] = HTTP_REQUESTS.labels(self.route, str(status))
        counter.inc()
        self.duration.observe(seconds)


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.in_flight = 0
        self._in_flight_gauge: Gauge | None = HTTP_IN_FLIGHT
        if multiprocess_dir() is None:
            self._in_flight_gauge = None
            HTTP_IN_FLIGHT.set_function(lambda: self.in_flight)
        self._series: dict[str, _RouteSeries] = {}
        self._templates: list[tuple[re.Pattern[str], str]] | None = None  # made on first use

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        gauge = self._in_flight_gauge
        self.in_flight += 1
        if gauge is not None:
            gauge.inc()
        started = perf_counter()
        try:
            await self.app(scope, receive, send_counted)
        except BaseException:
            # Nothing sent yet: Starlette's ServerErrorMiddleware, outside this one, answers 500.
            status = status or 500
            raise
        finally:
            elapsed = perf_counter() - started
            self.in_flight -= 1
            if gauge is not None:
                gauge.dec()
            if status:  # 0: the app sent nothing (its client went away), nothing to count
                self._series_of(scope, status).answered(status, elapsed)

    def _series_of(self, scope: Scope, status: int) -> _RouteSeries:
        route = scope.get("route")
        label: str = route.path_format if route is not None else self._refused_route(scope, status)
        series = self._series.get(label)
        if series is None:
            series = self._series[label] = _RouteSeries(label)
        return series

    def _refused_route(self, scope: Scope, status: int) -> str:
        """The route template a request answered without routing would have matched."""
        if status == 404:
            return UNMATCHED
        if self._templates is None:
            self._templates = [
                (route.path_regex, route.path_format) for route in _routes(scope["app"].router)
            ]
        path = scope["path"]
        for pattern, template in self._templates:
            if pattern.match(path):
                return template
        return UNMATCHED


def _routes(router: Any) -> Iterator[Any]:
    """Every route with a path template, in the router's order. FastAPI keeps an included
    router as one entry whose `original_router` holds its routes (included here without a
    prefix, so their templates are whole)."""
    for route in router.routes:
        if hasattr(route, "path_regex") and hasattr(route, "path_format"):
            yield route
        elif hasattr(route, "original_router"):
            yield from _routes(route.original_router)

"""A cap on the requests being answered at once in this process (API_MAX_IN_FLIGHT).

This is what bounds memory while Kafka is down: each pending POST waits up to
API_ACK_DEADLINE_S for the broker, holding its body, its task and its connection's buffers.
One request over the cap is answered 503 with Retry-After at once, before any of that.
The probes (/healthz, /readyz) are never refused: an orchestrator that sees a busy process as
dead would restart it and make the overload worse. Nor is /metrics: an overload is when its
numbers are wanted most, and it holds nothing while it answers (no await but its sends).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.metrics import OVERLOADED
from app.api.problems import problem

PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


class InFlightCap:
    def __init__(
        self,
        app: ASGIApp,
        max_in_flight: int,
        retry_after_s: int,
        count_unavailable: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.count_unavailable = count_unavailable  # app.api.metrics; None: not counted
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        # Built once: a refusal costs two sends, so refusing stays cheap under a flood.
        self.refusal: Response = problem(
            503,
            "Server busy",
            f"more than {max_in_flight} requests are being answered; retry after Retry-After "
            "seconds",
            headers={"Retry-After": str(retry_after_s)},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            if self.count_unavailable is not None:
                self.count_unavailable(OVERLOADED)
            await self.refusal(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

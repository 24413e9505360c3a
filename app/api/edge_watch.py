"""The deadline sweep of app/api/edge_protocol.py: one timer per server walks the open
connections a few times a second, instead of arming and cancelling timers per request. A request
pays a few clock reads and attribute stores; a timeout fires at most one tick late.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app.api.edge_limits import WRITE_TIMEOUT, EdgeLimits

if TYPE_CHECKING:
    from app.api.edge_protocol import EdgeProtocol

log = logging.getLogger("orders.api.edge")

NOT_READING = "connections aborted: their responses unread for API_WRITE_TIMEOUT_S"


class ConnectionWatch:
    """One per server: expires connections past their deadline, logs the refusals it counted."""

    def __init__(
        self, limits: EdgeLimits, count_refusal: Callable[[str], None] | None = None
    ) -> None:
        self.tick_s = limits.tick_s
        self.write_timeout_s = limits.write_timeout_s
        self.refusals: Counter[str] = Counter()
        # Each refusal's slug, to orders_http_edge_refusals_total (None: METRICS_ENABLED=false).
        self.count_refusal = count_refusal
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, protocol: EdgeProtocol) -> None:
        if self._timer is None:
            self._timer = protocol.loop.call_later(
                self.tick_s, self._tick, protocol.loop, protocol.connections
            )

    def _tick(self, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        now = loop.time()
        connection: EdgeProtocol
        for connection in list(connections):  # all EdgeProtocols: no WebSocket (ws="none")
            if 0 < connection.write_deadline <= now:
                connection.transport.abort()  # frees its buffers now; it leaves soon after
                connection.write_deadline = -1.0  # not aborted (nor counted) twice
                self.refusals[NOT_READING] += 1
                if self.count_refusal is not None:
                    self.count_refusal(WRITE_TIMEOUT)
            elif 0 < connection.deadline <= now:
                connection.expire(now)
            elif not connection.write_deadline and connection.transport.is_closing():
                # Closed (by uvicorn too) while its last bytes wait for a client that does not
                # read: held until they are sent, so given as long as a paused write.
                connection.write_deadline = now + self.write_timeout_s
        if self.refusals:
            summary = ", ".join(f"{count} {reason}" for reason, count in self.refusals.items())
            log.warning("refused at the HTTP edge: %s", summary)
            self.refusals.clear()
        # Stop while no connection is open: a timer left behind would outlive the server.
        self._timer = (
            loop.call_later(self.tick_s, self._tick, loop, connections) if connections else None
        )

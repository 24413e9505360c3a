"""uvicorn's httptools protocol, held to the limits its parser does not enforce.

httptools (llhttp) accepts a head of any size and any number of headers, and uvicorn times out
only idle keep-alive connections. Here, before a byte reaches the parser:
- the request head (request line + headers) is counted as it arrives: past API_MAX_HEADER_BYTES
  it is refused (431) without being parsed, so a 256 MiB header costs one read, not a minute;
- headers are counted: past API_MAX_HEADERS, 431;
- a head must be complete within API_HEAD_TIMEOUT_S of its first byte (of the accept, for a
  connection's first request), and a body within API_BODY_TIMEOUT_S of its head: 408, closed;
- one connection over API_MAX_CONNECTIONS is answered 503 at once and closed, never held.
Every refusal is a problem+json written straight on the transport (no request reached the app;
none is written while an earlier response is under way) and ends the connection: after a
refusal, where the next request would begin is unknown.

Deadlines are checked by one timer per server (ConnectionWatch) that walks the open connections
a few times a second, instead of arming and cancelling two timers per request: a request pays a
clock read and an attribute store, and a timeout fires at most one tick late.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.settings import ApiSettings

log = logging.getLogger("orders.api.edge")

PROBLEM_JSON = b"application/problem+json"
# After a refusal, how long and how much of what the client still sends is read and dropped.
LINGER_S = 2.0
LINGER_MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class EdgeLimits:
    max_header_bytes: int
    max_headers: int
    head_timeout_s: float
    body_timeout_s: float
    max_connections: int
    retry_after_s: int

    @classmethod
    def from_settings(cls, api: ApiSettings) -> EdgeLimits:
        return cls(
            max_header_bytes=api.max_header_bytes,
            max_headers=api.max_headers,
            head_timeout_s=api.head_timeout_s,
            body_timeout_s=api.body_timeout_s,
            max_connections=api.max_connections,
            retry_after_s=api.retry_after_s,
        )

    @property
    def tick_s(self) -> float:
        """How often deadlines are checked: a fifth of the shortest timeout, within [50 ms, 1 s]."""
        return min(1.0, max(0.05, min(self.head_timeout_s, self.body_timeout_s) / 5))


@dataclass(frozen=True)
class Refusal:
    status: int
    title: str
    detail: str  # formatted with `limits`
    # Counted, then logged once per tick: one log line per refused request would let a flood
    # of bad requests cost the process more in logging than in refusing.
    reason: str


def problem_bytes(
    refusal: Refusal,
    limits: EdgeLimits,
    default_headers: Iterable[tuple[bytes, bytes]],
    retry_after_s: int | None = None,
) -> bytes:
    """A whole HTTP/1.1 problem+json response that closes the connection."""
    problem = {
        "type": "about:blank",
        "title": refusal.title,
        "status": refusal.status,
        "detail": refusal.detail.format(limits=limits),
    }
    body = json.dumps(problem, separators=(",", ":")).encode()
    lines = [STATUS_LINE[refusal.status]]
    lines.extend(name + b": " + value + b"\r\n" for name, value in default_headers)
    if retry_after_s is not None:
        lines.append(b"retry-after: %d\r\n" % retry_after_s)
    lines.append(b"content-type: " + PROBLEM_JSON + b"\r\n")
    lines.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
    lines.append(body)
    return b"".join(lines)


class _Refused(Exception):
    """Raised from a parser callback to stop the parser; the refusal is on the protocol."""


class ConnectionWatch:
    """One per server: closes connections past their deadline, logs the refusals it counted."""

    def __init__(self, limits: EdgeLimits) -> None:
        self.tick_s = limits.tick_s
        self.refusals: Counter[str] = Counter()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, protocol: EdgeProtocol) -> None:
        if self._timer is None:
            self._timer = protocol.loop.call_later(
                self.tick_s, self._tick, protocol.loop, protocol.connections
            )

    def _tick(self, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        now = loop.time()
        late = [
            connection
            for connection in connections
            if isinstance(connection, EdgeProtocol) and 0 < connection.deadline <= now
        ]
        for connection in late:
            connection.expire(now)
        if self.refusals:
            summary = ", ".join(f"{count} {reason}" for reason, count in self.refusals.items())
            log.warning("refused at the HTTP edge: %s", summary)
            self.refusals.clear()
        # Stop while no connection is open: a timer left behind would outlive the server.
        self._timer = (
            loop.call_later(self.tick_s, self._tick, loop, connections) if connections else None
        )


HEAD_TOO_LARGE = Refusal(
    431,
    "Request Header Fields Too Large",
    "the request line and headers may be at most {limits.max_header_bytes} bytes",
    "request heads over API_MAX_HEADER_BYTES",
)
TOO_MANY_HEADERS = Refusal(
    431,
    "Request Header Fields Too Large",
    "a request may carry at most {limits.max_headers} headers",
    "requests with more than API_MAX_HEADERS headers",
)
HEAD_TIMEOUT = Refusal(
    408,
    "Request Timeout",
    "the request line and headers must arrive within {limits.head_timeout_s} s",
    "heads not complete within API_HEAD_TIMEOUT_S",
)
BODY_TIMEOUT = Refusal(
    408,
    "Request Timeout",
    "the body must arrive within {limits.body_timeout_s} s of the headers",
    "bodies not complete within API_BODY_TIMEOUT_S",
)
TOO_MANY_CONNECTIONS = Refusal(
    503,
    "Service Unavailable",
    "too many connections are open; retry after Retry-After seconds",
    "connections over API_MAX_CONNECTIONS",
)


class EdgeProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: EdgeLimits,
        watch: ConnectionWatch,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.watch = watch
        # Between requests and while a head arrives, bytes count towards the head.
        self.in_head = True
        self.head_bytes = 0
        self.header_count = 0
        # The loop time by which the current head or body must be complete; 0: none pending.
        self.deadline = 0.0
        self.refused = False
        self.refusal: Refusal | None = None
        self.dropped = 0  # bytes read and dropped after a refusal

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            # Not added to the server's connections: it holds nothing, and leaves at once.
            self.transport = transport
            self.refused = True
            self._refuse(TOO_MANY_CONNECTIONS, retry_after_s=self.limits.retry_after_s)
            return
        super().connection_made(transport)
        self.deadline = self.loop.time() + self.limits.head_timeout_s
        self.watch.watch(self)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            self.dropped += len(data)
            if self.dropped > LINGER_MAX_BYTES:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        # The common case, a whole head (and body) in one read within the limit: one check.
        limit = self.limits.max_header_bytes
        if len(data) <= (limit - self.head_bytes if self.in_head else limit):
            if self.in_head:
                self.head_bytes += len(data)
            self._parse(data)
            return
        self._parse_in_slices(memoryview(data), limit)

    def _parse_in_slices(self, view: memoryview, limit: int) -> None:
        while view:
            if self.in_head:
                allowed = limit - self.head_bytes
                if len(view) <= allowed:
                    self.head_bytes += len(view)
                    self._parse(view)
                    return
                piece, view = view[:allowed], view[allowed:]
                self.head_bytes = limit
                if not self._parse(piece):
                    return
                if self.in_head and self.head_bytes == limit:
                    # The same head is still incomplete, and more of it is here.
                    self._refuse(HEAD_TOO_LARGE)
                    return
            else:
                # A body, then maybe the next request: fed in slices so that a head starting
                # in this read is counted from at most one slice after its first byte.
                if len(view) <= limit:
                    self._parse(view)
                    return
                piece, view = view[:limit], view[limit:]
                if not self._parse(piece):
                    return

    def _parse(self, data: bytes | memoryview) -> bool:
        """Feed the parser as uvicorn does; whether the connection is still usable after."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if self.refusal is None:
                # One of uvicorn's own callbacks failed on this request: its answer, a 400.
                self.send_400_response("Invalid HTTP request received.")
            else:
                self._refuse(self.refusal)
            return False
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return not self.transport.is_closing()

    # Parser callbacks
    def on_message_begin(self) -> None:
        self.header_count = 0
        if not self.deadline:
            self.deadline = self.loop.time() + self.limits.head_timeout_s
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > self.limits.max_headers:
            self.refusal = TOO_MANY_HEADERS
            raise _Refused
        HttpToolsProtocol.on_header(self, name, value)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_bytes = 0
        self.deadline = self.loop.time() + self.limits.body_timeout_s
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.in_head = True
        self.deadline = 0.0
        super().on_message_complete()

    def expire(self, now: float) -> None:
        """The deadline passed: answer 408 if no response is under way, and close."""
        if self.refused:  # the linger after a refusal is over
            self.transport.close()
            return
        if not self.in_head:
            cycle = self.cycle
            if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
                # uvicorn stopped reading because the app has not taken the body yet, or the
                # client waits for the 100 Continue the app's first read sends: the wait is
                # the app's, not the client's.
                self.deadline = now + self.limits.body_timeout_s
                return
        self._refuse(HEAD_TIMEOUT if self.in_head else BODY_TIMEOUT)

    def _refuse(self, refusal: Refusal, retry_after_s: int | None = None) -> None:
        """Answer `refusal` where no other response is under way on this connection, and close.
        A head refused while an earlier (pipelined) request is still being answered is not its
        own answer's turn: the connection is only closed."""
        cycle = self.cycle
        if self.in_head:
            answerable = cycle is None or cycle.response_complete
        else:
            answerable = cycle is None or not cycle.response_started
        if cycle is not None and not cycle.response_complete:
            # The app's receive() now returns http.disconnect and its sends are dropped, so no
            # byte of its answer can follow ours.
            cycle.disconnected = True
            cycle.message_event.set()
        if answerable:
            self._answer(refusal, retry_after_s)
        else:
            self.refused = True
            self.watch.refusals[refusal.reason] += 1
            self.transport.close()

    def _answer(self, refusal: Refusal, retry_after_s: int | None = None) -> None:
        """Write the refusal, then linger: a client still sending (the rest of a huge head) that
        met a plain close would get a reset, and might lose the answer before reading it. So
        our side is shut (FIN), what still arrives is dropped unread, and the connection is
        closed when the client closes, after LINGER_S, or after LINGER_MAX_BYTES."""
        self.refused = True
        self.deadline = 0.0
        self.watch.refusals[refusal.reason] += 1
        if self.transport.is_closing():
            return
        headers = self.server_state.default_headers
        self.transport.write(problem_bytes(refusal, self.limits, headers, retry_after_s))
        if self not in self.connections or not self.transport.can_write_eof():
            # Over the connection cap, nothing is held, not even for a linger.
            self.transport.close()
            return
        self.transport.write_eof()
        if self.flow is not None:
            self.flow.resume_reading()
        self.deadline = self.loop.time() + LINGER_S

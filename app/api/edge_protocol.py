"""uvicorn's httptools protocol, held to the limits its parser does not enforce.

httptools (llhttp) accepts a head of any size and any number of headers, a body and trailers of
any size, any number of pipelined requests, and uvicorn times out only idle keep-alive
connections. Here (limits and refusals: edge_limits.py; byte accounting: edge_framing.py):
- bytes are counted before the parser sees them: a head past API_MAX_HEADER_BYTES (431), or a
  request sending more than its body, trailer and framing allowance after its head (413), is
  refused unparsed; headers and trailers are counted (past API_MAX_HEADERS, 431);
- at most API_MAX_PIPELINED requests wait behind the one being answered: then the parser is fed
  no more and the connection not read until one is answered;
- every connection not waiting on the app has a deadline (checked by edge_watch.py): a head
  within API_HEAD_TIMEOUT_S of its first byte (of the accept, for the first request), a body
  within API_BODY_TIMEOUT_S of its head (408); idle, closed after API_KEEP_ALIVE_TIMEOUT_S from
  its last response or the end of its last request, whichever is later; a send buffer that
  stays full (a client not reading) for API_WRITE_TIMEOUT_S aborts the connection, which frees
  the app's request and the buffers;
- one connection over API_MAX_CONNECTIONS is answered 503 at once and closed, never held.
A refusal ends the connection: where the next request would begin is unknown after it. It is
written once every earlier pipelined request is answered (the connection is not read
meanwhile), then the connection lingers a little, dropping what the client still sends."""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from app.api import edge_framing as framing
from app.api.edge_limits import (
    BAD_REQUEST,
    BODY_TIMEOUT,
    BODY_TOO_LARGE,
    HEAD_TIMEOUT,
    HEAD_TOO_LARGE,
    TOO_MANY_CONNECTIONS,
    TOO_MANY_HEADERS,
    EdgeLimits,
    Refusal,
    problem_bytes,
)
from app.api.edge_watch import ConnectionWatch

# After a refusal, how long and how much of what the client still sends is read and dropped.
LINGER_S = 2.0
LINGER_MAX_BYTES = 4 * 1024 * 1024

SMALL_PIECE = 8192

# What a connection's `deadline` is for: on expiry, a 408 (HEAD, BODY), or a close (IDLE, LINGER).
NONE, HEAD, BODY, IDLE, LINGER = range(5)


class HeldFlow(FlowControl):
    """uvicorn's flow control, whose reading stays paused while `held`: uvicorn resumes reading
    whenever a response completes or the app reads, which would read (and queue) more pipelined
    requests than the protocol lets in."""

    held = False

    def resume_reading(self) -> None:
        if not self.held:
            super().resume_reading()


class _Refused(Exception):
    """Raised from a parser callback to stop the parser; the refusal is on the protocol."""


class EdgeProtocol(HttpToolsProtocol):
    flow: HeldFlow

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
        self.framing = framing.Framing(limits.max_header_bytes, limits.after_head_budget)
        self.max_headers = limits.max_headers
        self.max_pipelined = limits.max_pipelined
        self.header_count = 0
        # The loop time by which `expiry` happens; 0: none (the app is answering).
        self.deadline = 0.0
        self.expiry = NONE
        self.write_deadline = 0.0  # while the transport's send buffer is full; -1: aborted
        self.active: RequestResponseCycle | None = None  # the request being answered
        # Bytes read but not fed while API_MAX_PIPELINED requests wait: data[pos:].
        self.backlog: bytes | None = None
        self.backlog_pos = 0
        # Nothing more is parsed: refused (then lingering), or after an Upgrade request.
        self.refused = False
        self.deferred: tuple[Refusal, int | None] | None = None  # after the pending answers
        self.dropped = 0  # bytes read and dropped after a refusal

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            # Not added to the server's connections: it holds nothing, and leaves at once.
            self.transport = transport
            self._refuse(TOO_MANY_CONNECTIONS, retry_after_s=self.limits.retry_after_s)
            return
        super().connection_made(transport)
        self.flow = HeldFlow(transport)
        self._expire_in(HEAD, self.limits.head_timeout_s)
        self.watch.watch(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # uvicorn tells only the last request parsed; the one being answered may be another.
        active = self.active
        if active is not None and not active.response_complete:
            active.disconnected = True
            active.message_event.set()
        self.backlog = None
        super().connection_lost(exc)

    def _expire_in(self, expiry: int, seconds: float) -> None:
        self.deadline = self.loop.time() + seconds
        self.expiry = expiry

    def data_received(self, data: bytes) -> None:
        if self.refused:
            self.dropped += len(data)
            if self.dropped > LINGER_MAX_BYTES:
                self.transport.close()
            return
        if self.backlog is not None:  # read while held: kept with the rest (reading is paused)
            data = self.backlog[self.backlog_pos :] + data
            self.backlog = None
        self._feed(data, 0)

    def _feed(self, data: bytes, pos: int) -> None:
        counted = self.framing
        size = len(data)
        try:
            while pos < size:
                if len(self.pipeline) >= self.max_pipelined:
                    self._hold(data, pos)
                    return
                if counted.mode == framing.HEAD and not counted.head_bytes and self.expiry != HEAD:
                    # The first byte of a head: from idle, or from waiting on the app.
                    self.deadline = self.loop.time() + self.limits.head_timeout_s
                    self.expiry = HEAD
                end = counted.piece(data, pos)
                if end == framing.OVER:
                    over = HEAD_TOO_LARGE if counted.mode == framing.HEAD else BODY_TOO_LARGE
                    self._refuse(over)
                    return
                if end - pos == size:
                    self.parser.feed_data(data)
                elif end - pos < SMALL_PIECE:  # a copy is cheaper than a view
                    self.parser.feed_data(data[pos:end])
                else:
                    self.parser.feed_data(memoryview(data)[pos:end])
                if counted.mode == framing.BODY:
                    counted.body_framing()
                elif counted.head_bytes or counted.mode == framing.CHUNKED:
                    counted.fed(data, end)
                pos = end
        except httptools.HttpParserCallbackError:
            # One of our callbacks stopped the parser, or one of uvicorn's failed (a URL it
            # cannot decode): a 400.
            counted_out = self.header_count > self.limits.max_headers
            self._refuse(TOO_MANY_HEADERS if counted_out else BAD_REQUEST)
        except httptools.HttpParserUpgrade:
            # No WebSocket (ws="none"): an Upgrade or CONNECT request is answered as plain HTTP,
            # and the connection ends with its answer: what follows is not read.
            self.cycle.keep_alive = False
            self.refused = True
            self.flow.held = True
            self.flow.pause_reading()
        except httptools.HttpParserError:
            self._refuse(BAD_REQUEST)

    def _hold(self, data: bytes, pos: int) -> None:
        self.backlog = data
        self.backlog_pos = pos
        self.flow.held = True
        self.flow.pause_reading()

    def _release(self) -> None:
        """Feed what was held back, now that a waiting request has started."""
        if self.backlog is None or self.parser is None or self.transport.is_closing():
            return
        data, pos = self.backlog, self.backlog_pos
        self.backlog = None
        self.flow.held = False
        self._feed(data, pos)
        if self.backlog is None and not self.refused and not self.pipeline:
            self.flow.resume_reading()

    # Parser callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        """uvicorn's (inlined: a call less per header), counting, and noting the framing."""
        self.header_count += 1  # trailers too: reset when the message completes
        if self.header_count > self.max_headers:
            raise _Refused
        name = name.lower()
        if name == b"content-length":
            self.framing.length = value
        elif name == b"transfer-encoding":
            self.framing.chunked = True
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        super().on_headers_complete()  # first: if it fails (a bad URL), the head is not over
        self.framing.headers_complete()
        self.deadline = self.loop.time() + self.limits.body_timeout_s
        self.expiry = BODY
        if not self.pipeline:  # started, not queued behind an earlier request
            self.active = self.cycle

    def on_message_complete(self) -> None:
        self.framing.message_complete()
        self.header_count = 0
        if self.cycle.response_complete:
            # Answered before its body was read (401, 413, ...): from now on, idle.
            self._expire_in(IDLE, self.limits.keep_alive_s)
        else:
            self.deadline = 0.0
            self.expiry = NONE
        super().on_message_complete()

    def on_response_complete(self) -> None:
        """uvicorn's, with the keep-alive timeout as a deadline instead of a timer per request,
        and what pipelining, a held backlog or a deferred refusal need."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self.active = cycle
            self._start_asgi_task(cycle, app)
        elif self.deferred is not None:
            self._answer(*self.deferred)
            return
        elif self.framing.mode == framing.HEAD and not self.framing.head_bytes:
            self._expire_in(IDLE, self.limits.keep_alive_s)
        if self.backlog is not None:
            self.loop.call_soon(self._release)

    def pause_writing(self) -> None:
        self.flow.pause_writing()
        self.write_deadline = self.loop.time() + self.limits.write_timeout_s

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        self.write_deadline = 0.0

    def expire(self, now: float) -> None:
        """The deadline passed: close an idle or lingering connection; else answer 408 (once the
        earlier answers are written) unless the wait is the app's."""
        expiry = self.expiry
        self.deadline = 0.0
        self.expiry = NONE
        if expiry in (IDLE, LINGER):
            self.transport.close()
            return
        if expiry == BODY:
            cycle = self.cycle
            if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
                # uvicorn stopped reading because the app has not taken the body yet (or the
                # request waits behind others), or the client waits for the 100 Continue the
                # app's first read sends: the wait is the app's, not the client's.
                self._expire_in(BODY, self.limits.body_timeout_s)
                return
        self._refuse(HEAD_TIMEOUT if expiry == HEAD else BODY_TIMEOUT)

    def _refuse(self, refusal: Refusal, retry_after_s: int | None = None) -> None:
        """Refuse the request whose bytes are arriving (a head: not yet a request; a body:
        `self.cycle`) and end the connection. The problem is written in its turn: at once if no
        earlier response is pending, else after them (reading stops meanwhile). A request
        answered already (before its body) gets no second answer: the connection is shut."""
        self.refused = True
        self.deadline = 0.0
        self.expiry = NONE
        self.backlog = None
        self.watch.refusals[refusal.reason] += 1
        if self.watch.count_refusal is not None:
            self.watch.count_refusal(refusal.slug)
        mine = None if self.framing.mode == framing.HEAD else self.cycle
        if mine is not None and mine.response_started:
            if mine.response_complete:
                self._linger()
            else:  # its answer is under way: cut short
                mine.disconnected = True
                mine.message_event.set()
                self.transport.close()
            return
        if mine is not None:
            if self.pipeline and self.pipeline[0][0] is mine:
                self.pipeline.popleft()  # queued, never started
            else:  # its app is waiting for the body: it reads http.disconnect, its sends drop
                mine.disconnected = True
                mine.message_event.set()
        active = self.active
        earlier = active is not None and active is not mine and not active.response_complete
        if self.pipeline or earlier:
            self.deferred = (refusal, retry_after_s)
            self.flow.held = True
            self.flow.pause_reading()
            return
        self._answer(refusal, retry_after_s)

    def _answer(self, refusal: Refusal, retry_after_s: int | None = None) -> None:
        self.deferred = None
        if self.transport.is_closing():
            return
        headers = self.server_state.default_headers
        self.transport.write(problem_bytes(refusal, self.limits, headers, retry_after_s))
        if self not in self.connections or not self.transport.can_write_eof():
            # Over the connection cap, nothing is held, not even for a linger.
            self.transport.close()
            return
        self._linger()

    def _linger(self) -> None:
        """Shut our side (FIN) and drop what still arrives, until the client closes, LINGER_S
        pass or LINGER_MAX_BYTES arrive: a client still sending (the rest of a huge head) that
        met a plain close would get a reset, and might lose the answer before reading it."""
        self.transport.write_eof()
        self.flow.held = False
        self.flow.resume_reading()
        self._expire_in(LINGER, LINGER_S)

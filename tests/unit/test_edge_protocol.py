"""The edge protocol against an in-memory transport: head accounting, header count, deadlines."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from app.api.edge_protocol import (
    HEAD_TOO_LARGE,
    LINGER_MAX_BYTES,
    ConnectionWatch,
    EdgeLimits,
    EdgeProtocol,
    problem_bytes,
)

LIMITS = EdgeLimits(
    max_header_bytes=1024,
    max_headers=10,
    head_timeout_s=2.0,
    body_timeout_s=3.0,
    max_connections=4,
    retry_after_s=7,
)


class MemoryTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.shut = False  # our side's FIN sent (write_eof)
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.finished, "a write after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.shut = True

    @property
    def finished(self) -> bool:
        """Nothing more will be written: closed, or our side shut while the client's lingers."""
        return self.closed or self.shut

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class Echo:
    """Answers 200 with the body it read; remembers each request's path and header count."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, bytes]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message["body"]
            if not message["more_body"]:
                break
        self.seen.append((scope["path"], len(scope["headers"]), body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


WATCHES: list[ConnectionWatch] = []
PROTOCOLS: list[EdgeProtocol] = []


@pytest.fixture(autouse=True)
async def _disconnect() -> AsyncIterator[None]:
    """The tests call `expire` and `_tick` themselves: no timer may outlive its test, nor an app
    still waiting for a body."""
    yield
    for watch in WATCHES:
        if watch._timer is not None:
            watch._timer.cancel()
    for protocol in PROTOCOLS:
        if protocol.parser is not None:
            protocol.connection_lost(None)
    await settle()
    WATCHES.clear()
    PROTOCOLS.clear()


def connect(
    app: Echo, limits: EdgeLimits = LIMITS, state: ServerState | None = None
) -> tuple[EdgeProtocol, MemoryTransport]:
    config = Config(app, lifespan="off")
    watch = ConnectionWatch(limits)
    WATCHES.append(watch)
    protocol = EdgeProtocol(
        config, state or ServerState(), {}, asyncio.get_running_loop(), limits=limits, watch=watch
    )
    transport = MemoryTransport()
    protocol.connection_made(transport)
    PROTOCOLS.append(protocol)
    return protocol, transport


def head(size: int, path: str = "/") -> bytes:
    """A GET request whose head is exactly `size` bytes."""
    start = f"GET {path} HTTP/1.1\r\nhost: x\r\nx-pad: ".encode()
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


def status_of(written: bytes | bytearray) -> int:
    return int(written.split(b" ", 2)[1])


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_head_at_the_limit_is_served() -> None:
    app = Echo()
    protocol, transport = connect(app)
    protocol.data_received(head(LIMITS.max_header_bytes))
    await settle()
    assert status_of(transport.written) == 200
    assert not transport.finished


async def test_a_head_one_byte_over_is_refused_431_before_the_parser_sees_it() -> None:
    app = Echo()
    protocol, transport = connect(app)
    protocol.data_received(head(LIMITS.max_header_bytes + 1))
    await settle()
    assert status_of(transport.written) == 431
    assert transport.finished
    assert app.seen == []
    body = json.loads(bytes(transport.written).split(b"\r\n\r\n", 1)[1])
    assert body["status"] == 431
    assert str(LIMITS.max_header_bytes) in body["detail"]


async def test_a_huge_head_in_small_reads_is_refused_once_past_the_limit() -> None:
    protocol, transport = connect(Echo())
    protocol.data_received(b"GET / HTTP/1.1\r\nx-big: ")
    reads = 0
    while not transport.finished:
        protocol.data_received(b"a" * 100)
        reads += 1
    assert reads <= LIMITS.max_header_bytes // 100 + 1
    assert status_of(transport.written) == 431
    # Bytes after the refusal are ignored, not parsed.
    protocol.data_received(b"a" * 100)


async def test_a_body_in_the_same_read_as_its_head_does_not_count_as_head() -> None:
    app = Echo()
    protocol, transport = connect(app)
    body = b"b" * (LIMITS.max_header_bytes * 5)
    request = b"POST /orders HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
    protocol.data_received(request + body)
    await settle()
    assert status_of(transport.written) == 200
    assert app.seen == [("/orders", 2, body)]


async def test_pipelined_requests_in_one_read_are_each_served() -> None:
    app = Echo()
    protocol, transport = connect(app)
    protocol.data_received(head(300, "/a") + head(300, "/b") + head(300, "/c"))
    for _ in range(5):
        await settle()
    assert [path for path, _, _ in app.seen] == ["/a", "/b", "/c"]
    assert transport.written.count(b"HTTP/1.1 200") == 3


async def test_a_head_after_a_large_body_is_counted_from_near_its_first_byte() -> None:
    app = Echo()
    protocol, transport = connect(app)
    body = b"b" * (LIMITS.max_header_bytes * 3)
    request = b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
    # The next request's head starts in the same read as the body and is three limits long:
    # at most one slice of it goes uncounted, so the read is refused without another.
    big = b"GET /b HTTP/1.1\r\nx-big: " + b"a" * (LIMITS.max_header_bytes * 3)
    protocol.data_received(request + body + big)
    # /a is not answered yet: a 431 now would read as its answer, so the connection is only
    # closed (and /a's app sees the client gone).
    assert transport.closed
    assert transport.written == b""
    await settle()
    assert transport.written == b""
    assert app.seen == []


async def test_too_many_headers_are_refused_431() -> None:
    app = Echo()
    protocol, transport = connect(app)
    lines = b"".join(b"h%d: v\r\n" % index for index in range(LIMITS.max_headers + 1))
    protocol.data_received(b"GET / HTTP/1.1\r\n" + lines + b"\r\n")
    await settle()
    assert status_of(transport.written) == 431
    assert b"at most 10 headers" in transport.written
    assert app.seen == []


async def test_as_many_headers_as_allowed_are_served() -> None:
    app = Echo()
    protocol, transport = connect(app)
    lines = b"".join(b"h%d: v\r\n" % index for index in range(LIMITS.max_headers))
    protocol.data_received(b"GET / HTTP/1.1\r\n" + lines + b"\r\n")
    await settle()
    assert status_of(transport.written) == 200
    assert app.seen == [("/", LIMITS.max_headers, b"")]


async def test_one_connection_over_the_cap_is_answered_503_and_closed() -> None:
    state = ServerState()
    opened = [connect(Echo(), state=state) for _ in range(LIMITS.max_connections)]
    assert all(not transport.finished for _, transport in opened)
    protocol, transport = connect(Echo(), state=state)
    assert transport.closed  # at once: held for no linger
    assert status_of(transport.written) == 503
    assert b"retry-after: 7\r\n" in transport.written
    assert protocol not in state.connections
    protocol.data_received(head(100))  # ignored
    protocol.connection_lost(None)
    assert len(state.connections) == LIMITS.max_connections


async def test_a_head_not_complete_by_its_deadline_is_answered_408() -> None:
    protocol, transport = connect(Echo())
    accepted = asyncio.get_running_loop().time()
    # The deadline of a connection's first request runs from the accept.
    assert protocol.deadline == pytest.approx(accepted + LIMITS.head_timeout_s, abs=0.05)
    protocol.data_received(b"GET / HTTP/1.1\r\nhost:")
    protocol.expire(protocol.deadline)
    assert status_of(transport.written) == 408
    assert transport.finished


async def test_a_body_not_complete_by_its_deadline_is_answered_408_and_the_app_disconnected() -> (
    None
):
    app = Echo()
    protocol, transport = connect(app)
    protocol.data_received(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nab")
    now = asyncio.get_running_loop().time()
    assert protocol.deadline == pytest.approx(now + LIMITS.body_timeout_s, abs=0.05)
    await settle()
    protocol.expire(protocol.deadline)
    await settle()
    assert status_of(transport.written) == 408
    assert transport.finished
    assert protocol.cycle.disconnected
    assert app.seen == []


async def test_a_body_the_app_has_not_taken_yet_is_not_the_clients_delay() -> None:
    protocol, transport = connect(Echo())
    protocol.data_received(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nab")
    protocol.flow.pause_reading()
    deadline = protocol.deadline
    protocol.expire(deadline)
    assert not transport.finished
    assert protocol.deadline == deadline + LIMITS.body_timeout_s


async def test_a_client_waiting_for_100_continue_is_not_late() -> None:
    protocol, transport = connect(Echo())
    protocol.data_received(
        b"POST / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 10\r\n\r\n"
    )
    deadline = protocol.deadline
    protocol.expire(deadline)  # the app has not asked for the body yet
    assert not transport.finished
    assert protocol.deadline == deadline + LIMITS.body_timeout_s


async def test_no_deadline_while_the_app_answers_or_the_connection_idles() -> None:
    protocol, transport = connect(Echo())
    protocol.data_received(head(100))
    assert protocol.deadline == 0.0  # the request is complete: the app's time, not the client's
    await settle()
    assert status_of(transport.written) == 200
    assert protocol.deadline == 0.0  # idle: uvicorn's keep-alive timeout closes it
    protocol.data_received(b"G")
    assert protocol.deadline > 0.0  # the next request's head has begun


async def test_the_watch_expires_only_connections_past_their_deadline() -> None:
    state = ServerState()
    late, late_transport = connect(Echo(), state=state)
    _, fresh_transport = connect(Echo(), state=state)
    late.deadline = asyncio.get_running_loop().time() - 1
    late.watch._tick(asyncio.get_running_loop(), state.connections)
    assert late_transport.finished
    assert not fresh_transport.finished
    assert late.watch.refusals == {}  # counted, then logged and cleared by the tick


async def test_after_a_refusal_the_client_is_read_unparsed_then_closed() -> None:
    app = Echo()
    protocol, transport = connect(app)
    protocol.data_received(head(LIMITS.max_header_bytes + 1))
    assert transport.shut
    assert not transport.closed  # lingering: the client may still be sending its head
    protocol.data_received(head(100))  # dropped, not parsed
    await settle()
    assert app.seen == []
    # Closed when the linger is over...
    protocol.expire(protocol.deadline)
    assert transport.closed
    # ...or once the client has sent too much more.
    protocol, transport = connect(app)
    protocol.data_received(head(LIMITS.max_header_bytes + 1))
    protocol.data_received(b"a" * (LINGER_MAX_BYTES + 1))
    assert transport.closed


def test_a_refusal_is_a_complete_problem_response() -> None:
    raw = problem_bytes(HEAD_TOO_LARGE, LIMITS, [(b"cache-control", b"no-store")], 3)
    head_part, body = raw.split(b"\r\n\r\n", 1)
    lines = head_part.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert b"content-type: application/problem+json" in lines
    assert b"content-length: %d" % len(body) in lines
    assert b"connection: close" in lines
    assert b"retry-after: 3" in lines
    assert b"cache-control: no-store" in lines
    assert json.loads(body)["title"] == "Request Header Fields Too Large"

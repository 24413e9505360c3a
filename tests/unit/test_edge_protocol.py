"""The edge protocol against an in-memory transport: head accounting, header count, deadlines."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from app.api import edge_protocol
from app.api.edge_limits import HEAD_TOO_LARGE, EdgeLimits, problem_bytes
from app.api.edge_protocol import LINGER_MAX_BYTES, EdgeProtocol
from app.api.edge_watch import ConnectionWatch

LIMITS = EdgeLimits(
    max_header_bytes=1024,
    max_headers=10,
    head_timeout_s=2.0,
    body_timeout_s=3.0,
    max_connections=4,
    retry_after_s=7,
    keep_alive_s=4.0,
    write_timeout_s=5.0,
    max_body_bytes=4096,
    max_pipelined=3,
)


class MemoryTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.shut = False  # our side's FIN sent (write_eof)
        self.reading = True
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.finished, "a write after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True
        self.aborted = True

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
    app: Any, limits: EdgeLimits = LIMITS, state: ServerState | None = None
) -> tuple[EdgeProtocol, MemoryTransport]:
    config = Config(app, lifespan="off", ws="none")  # as app/api/http_server.py runs it
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


def statuses(written: bytes | bytearray) -> list[int]:
    return [int(part[:3]) for part in bytes(written).split(b"HTTP/1.1 ")[1:]]


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


async def test_a_head_after_a_body_in_the_same_read_is_counted_from_its_first_byte() -> None:
    # The next request's head starts in the same read as the end of a body: counted exactly,
    # a head of the limit is served and one byte more refused (it used to go partly uncounted).
    body = b"b" * (LIMITS.max_header_bytes * 3)
    request = b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
    for extra, paths in ((0, ["/a", "/b"]), (1, ["/a"])):
        app = Echo()
        protocol, transport = connect(app)
        protocol.data_received(request + body + head(LIMITS.max_header_bytes + extra, "/b"))
        for _ in range(3):
            await settle()
        assert [path for path, _, _ in app.seen] == paths
        if extra:
            # /a's answer first, then the refusal: a 431 at once would read as /a's answer.
            assert statuses(transport.written) == [200, 431]
            assert transport.finished


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
    protocol.expire(protocol.deadline)
    assert not transport.finished
    now = asyncio.get_running_loop().time()
    assert protocol.deadline == pytest.approx(now + LIMITS.body_timeout_s, abs=0.05)


async def test_a_client_waiting_for_100_continue_is_not_late() -> None:
    protocol, transport = connect(Echo())
    protocol.data_received(
        b"POST / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 10\r\n\r\n"
    )
    protocol.expire(protocol.deadline)  # the app has not asked for the body yet
    assert not transport.finished
    now = asyncio.get_running_loop().time()
    assert protocol.deadline == pytest.approx(now + LIMITS.body_timeout_s, abs=0.05)


async def test_no_deadline_while_the_app_answers_then_the_keep_alive_one() -> None:
    protocol, transport = connect(Echo())
    protocol.data_received(head(100))
    assert protocol.deadline == 0.0  # the request is complete: the app's time, not the client's
    await settle()
    assert status_of(transport.written) == 200
    now = asyncio.get_running_loop().time()
    assert protocol.deadline == pytest.approx(now + LIMITS.keep_alive_s, abs=0.05)  # idle
    protocol.data_received(b"G")
    # The next request's head has begun: its own deadline, from its first byte.
    assert protocol.deadline == pytest.approx(now + LIMITS.head_timeout_s, abs=0.05)
    protocol.expire(protocol.deadline)
    assert status_of(transport.written[transport.written.index(b"HTTP/1.1 ", 10) :]) == 408


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


class Early(Echo):
    """Answers 401 at once, without reading the body (as authentication, 413 and 415 do)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.seen.append((scope["path"], len(scope["headers"]), b""))
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b"no"})


class Held(Echo):
    """Echo, answering each request only once `release()` lets one more through."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Semaphore(0)

    def release(self, count: int = 1) -> None:
        for _ in range(count):
            self.gate.release()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.gate.acquire()
        await super().__call__(scope, receive, send)


class FakeLoop:
    """A loop for ConnectionWatch._tick whose clock reads `now`."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(3600, lambda: None)


def tick(protocol: EdgeProtocol, now: float) -> None:
    watch = protocol.watch
    if watch._timer is not None:
        watch._timer.cancel()
    watch._tick(FakeLoop(now), protocol.connections)  # type: ignore[arg-type]


def chunked(path: str, body: bytes, size: int, trailer: bytes = b"") -> bytes:
    head = b"POST %s HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n" % path.encode()
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    return head + framed + b"0\r\n" + trailer + b"\r\n"


def waiting_on_the_app(protocol: EdgeProtocol) -> bool:
    active = protocol.active
    return bool(protocol.pipeline) or (active is not None and not active.response_complete)


# 1. Every connection not waiting on the app has a deadline.


async def test_after_an_early_answer_and_then_the_body_the_connection_is_idle_with_a_deadline() -> (
    None
):
    protocol, transport = connect(Early())
    protocol.data_received(b"POST /orders HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n")
    await settle()
    assert status_of(transport.written) == 401
    assert protocol.deadline > 0  # the body's deadline still runs
    protocol.data_received(b"0123456789")
    now = asyncio.get_running_loop().time()
    assert protocol.expiry == edge_protocol.IDLE
    assert protocol.deadline == pytest.approx(now + LIMITS.keep_alive_s, abs=0.05)
    tick(protocol, protocol.deadline)
    assert transport.closed
    assert transport.written.count(b"HTTP/1.1 ") == 1  # closed quietly, as keep-alive does


async def test_blank_lines_after_a_response_do_not_keep_a_connection_open() -> None:
    protocol, transport = connect(Echo())
    protocol.data_received(head(100))
    await settle()
    protocol.data_received(b"\r\n")
    deadline = protocol.deadline
    now = asyncio.get_running_loop().time()
    assert deadline == pytest.approx(now + LIMITS.head_timeout_s, abs=0.05)
    for _ in range(20):
        protocol.data_received(b"\r\n")
    assert protocol.deadline == deadline  # a blank line never restarts it
    tick(protocol, deadline)
    assert statuses(transport.written) == [200, 408]
    assert transport.finished


async def test_no_connection_outside_the_app_is_left_without_a_deadline() -> None:
    """Random reads of a mixed stream (early answers, bodies, chunked, blank lines, pipelined
    requests), with the app answering in between: after every step, a connection the app is
    not answering has a deadline."""
    import random

    stream = (
        head(80, "/a")
        + b"POST /early HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello"
        + b"\r\n\r\n"
        + chunked("/c", b"x" * 300, 64, b"x-t: 1\r\n")
        + b"POST /early HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"3\r\nabc\r\n0\r\n\r\n"
        + head(60, "/d")
        + head(60, "/e")
    )

    class Mixed(Echo):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["path"] == "/early":
                await Early.__call__(self, scope, receive, send)
            else:
                await super().__call__(scope, receive, send)

    rng = random.Random(11)
    for _ in range(200):
        app = Mixed()
        protocol, transport = connect(app)
        pos = 0
        while pos < len(stream):
            size = rng.choice((1, 2, 3, 5, 17, 64, 200))
            protocol.data_received(stream[pos : pos + size])
            pos += size
            for _ in range(rng.choice((0, 1, 3))):
                await asyncio.sleep(0)
            assert not transport.finished
            assert protocol.deadline > 0 or waiting_on_the_app(protocol), stream[:pos]
        for _ in range(5):
            await settle()
        assert [path for path, _, _ in app.seen] == ["/a", "/early", "/c", "/early", "/d", "/e"]
        assert protocol.expiry == edge_protocol.IDLE
        protocol.connection_lost(None)
        PROTOCOLS.remove(protocol)


# 2. After its head, a request sends at most its body, trailer and framing allowance.


async def test_a_chunked_body_with_trailers_within_the_limit_is_served() -> None:
    app = Echo()
    protocol, transport = connect(app)
    body = bytes(range(256)) * 16  # the body limit (4096), in chunks of 100
    protocol.data_received(chunked("/c", body, 100, b"x-checksum: 1\r\n"))
    for _ in range(3):
        await settle()
    assert status_of(transport.written) == 200
    assert app.seen == [("/c", 3, body)]  # host, transfer-encoding, the trailer


async def test_a_huge_chunked_trailer_is_refused_413_before_the_parser_sees_it() -> None:
    app = Echo()
    protocol, transport = connect(app)
    protocol.data_received(chunked("/c", b"{}", 2)[:-2] + b"x-t: ")
    fed = []
    feed_data = protocol.parser.feed_data
    protocol.parser = type("Spy", (), {"feed_data": lambda _, data: fed.append(len(data))})()
    protocol.data_received(b"a" * LIMITS.after_head_budget)
    protocol.parser = feed_data.__self__
    await settle()
    assert fed == []
    assert status_of(transport.written) == 413
    assert transport.finished
    assert app.seen == []  # its app read http.disconnect


async def test_a_body_past_the_allowance_after_an_early_answer_ends_the_connection() -> None:
    protocol, transport = connect(Early())
    protocol.data_received(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999\r\n\r\n")
    await settle()
    protocol.data_received(b"a" * LIMITS.after_head_budget)
    assert not transport.finished
    protocol.data_received(b"a")
    assert transport.finished
    assert statuses(transport.written) == [401]  # no second answer to the same request


async def test_trailers_count_against_the_header_limit() -> None:
    trailers = b"".join(b"t%d: v\r\n" % index for index in range(LIMITS.max_headers - 1))
    protocol, transport = connect(Echo())
    protocol.data_received(chunked("/c", b"{}", 2, trailers))  # 2 headers + 9 trailers
    await settle()
    assert status_of(transport.written) == 431


# 3. At most max_pipelined requests wait behind the one being answered.


async def test_pipelined_requests_queue_at_most_max_pipelined_and_are_all_answered_in_order() -> (
    None
):
    app = Held()
    protocol, transport = connect(app)
    resume = transport.resume_reading

    def resume_reading() -> None:
        # uvicorn resumes reading as each app reads its body: never while a backlog is held.
        assert protocol.backlog is None
        resume()

    transport.resume_reading = resume_reading  # type: ignore[method-assign]
    paths = [f"/r{index}" for index in range(40)]
    protocol.data_received(b"".join(head(60, path) for path in paths))
    await settle()
    assert len(protocol.pipeline) == LIMITS.max_pipelined
    assert protocol.backlog is not None
    assert not transport.reading  # not read until a waiting request starts
    for answered in range(1, len(paths) + 1):
        app.release()
        for _ in range(3):
            await settle()
        assert len(protocol.pipeline) <= LIMITS.max_pipelined
        assert transport.written.count(b"HTTP/1.1 200") == answered
    assert [path for path, _, _ in app.seen] == paths
    assert protocol.backlog is None
    assert transport.reading
    assert protocol.expiry == edge_protocol.IDLE


# 4. A client that does not read its responses is aborted after the write timeout.


async def test_a_client_that_does_not_read_is_aborted_after_the_write_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Held()
    protocol, transport = connect(app)
    protocol.data_received(head(60, "/a") + head(60, "/b"))
    protocol.pause_writing()  # the send buffer is full
    now = asyncio.get_running_loop().time()
    assert protocol.write_deadline == pytest.approx(now + LIMITS.write_timeout_s, abs=0.05)
    app.release()
    await settle()  # /a's app waits for the buffer to drain
    tick(protocol, protocol.write_deadline - 0.01)
    assert not transport.aborted
    with caplog.at_level("WARNING", logger="orders.api.edge"):
        tick(protocol, protocol.write_deadline)
    assert transport.aborted
    assert "1 connections aborted: their responses unread" in caplog.text
    active = protocol.active
    protocol.connection_lost(None)
    await settle()
    # /a was the request being answered (uvicorn only knows /b, the last one parsed): its app
    # is told, and its place freed.
    assert active is not None
    assert active.scope["path"] == "/a"
    assert active.disconnected


async def test_a_client_reading_again_clears_the_write_deadline() -> None:
    protocol, transport = connect(Echo())
    protocol.pause_writing()
    protocol.resume_writing()
    assert protocol.write_deadline == 0.0
    tick(protocol, asyncio.get_running_loop().time() + 3600)
    assert not transport.aborted


async def test_a_close_held_by_unsent_bytes_is_aborted_after_the_write_timeout() -> None:
    protocol, transport = connect(Echo())
    protocol.deadline = 0.0
    transport.close()  # uvicorn's close after `connection: close`: it waits for the client
    now = asyncio.get_running_loop().time()
    tick(protocol, now)
    assert protocol.write_deadline == pytest.approx(now + LIMITS.write_timeout_s)
    tick(protocol, protocol.write_deadline)
    assert transport.aborted


# 6. A refusal behind a pending answer waits for it.


async def test_a_head_refused_behind_a_pending_answer_is_written_after_it() -> None:
    app = Held()
    protocol, transport = connect(app)
    protocol.data_received(head(60, "/a") + head(LIMITS.max_header_bytes + 1, "/b"))
    await settle()
    assert transport.written == b""
    assert not transport.finished
    assert not transport.reading
    app.release()
    for _ in range(3):
        await settle()
    assert statuses(transport.written) == [200, 431]
    assert transport.finished


async def test_a_head_timing_out_behind_a_pending_answer_is_answered_408_after_it() -> None:
    app = Held()
    protocol, transport = connect(app)
    protocol.data_received(head(60, "/a") + b"GET /b HTTP/1.1\r\nx: ")
    tick(protocol, protocol.deadline)
    assert transport.written == b""
    app.release()
    for _ in range(3):
        await settle()
    assert statuses(transport.written) == [200, 408]
    assert transport.finished


# 7. Every request on a connection may carry max_headers headers.


async def test_every_request_on_a_keep_alive_connection_may_carry_the_most_headers() -> None:
    app = Echo()
    protocol, transport = connect(app)
    lines = b"".join(b"h%d: v\r\n" % index for index in range(LIMITS.max_headers))
    request = b"GET / HTTP/1.1\r\n" + lines + b"\r\n"
    for _ in range(3):
        protocol.data_received(request)
        await settle()
    protocol.data_received(request * 3)  # pipelined, in one read
    for _ in range(5):
        await settle()
    assert statuses(transport.written) == [200] * 6


# 8. No WebSocket: an Upgrade request is plain HTTP, and ends the connection.


async def test_an_upgrade_request_is_answered_as_plain_http_and_then_closed() -> None:
    app = Echo()
    protocol, transport = connect(app)
    upgrade = (
        b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    )
    protocol.data_received(upgrade + b"\x81\x05hello")
    for _ in range(3):
        await settle()
    assert statuses(transport.written) == [200]
    assert b"connection: close" in transport.written
    assert transport.closed

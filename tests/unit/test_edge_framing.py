"""The edge's byte accounting (app/api/edge_framing.py) against the real parser, without sockets:
every head and every body is counted exactly, however the bytes are split into reads."""

from __future__ import annotations

import httptools
import pytest

from app.api.edge_framing import BODY, CHUNKED, HEAD, OVER, Framing


class Over(Exception):
    pass


class Driver:
    """Feeds reads as EdgeProtocol._feed does, and records what the framing counted for each
    message when the parser found its head and its end."""

    def __init__(self, max_head: int = 1024, budget: int = 4096) -> None:
        self.framing = Framing(max_head, budget)
        self.parser = httptools.HttpRequestParser(self)
        self.heads: list[int] = []  # head bytes counted, per message
        self.after: list[int] = []  # bytes counted after the head, per message
        self.bodies: list[bytes] = []
        self.body = b""
        self.heads_in_piece = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length":
            self.framing.length = value
        elif name == b"transfer-encoding":
            self.framing.chunked = True

    def on_headers_complete(self) -> None:
        self.heads.append(self.framing.head_bytes)
        self.framing.headers_complete()
        self.heads_in_piece += 1

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.after.append(self.framing.after_head)
        self.bodies.append(self.body)
        self.body = b""
        self.framing.message_complete()

    def feed(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            end = self.framing.piece(data, pos)
            if end == OVER:
                raise Over
            self.heads_in_piece = 0
            self.parser.feed_data(data[pos:end])
            assert self.heads_in_piece <= 1  # what bounds the requests queued per read
            if self.framing.mode == BODY:
                self.framing.body_framing()
            elif self.framing.head_bytes or self.framing.mode == CHUNKED:
                self.framing.fed(data, end)
            pos = end


GET = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n"
POST_HEAD = b"POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 13\r\n\r\n"
POST_BODY = b"\r\n\r\nhello\r\n\r\n"  # a body that looks like blank lines
CHUNKED_HEAD = b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
CHUNKED_BODY = b"4\r\n\r\n\r\n\r\n3;ext=1\r\nabc\r\n0\r\nx-trailer: t\r\n\r\n"
BLANK_THEN_GET = b"\r\n\r\n" + GET  # blank lines before a request belong to its head
STREAM = GET + POST_HEAD + POST_BODY + CHUNKED_HEAD + CHUNKED_BODY + BLANK_THEN_GET + GET

EXPECTED_HEADS = [len(GET), len(POST_HEAD), len(CHUNKED_HEAD), len(BLANK_THEN_GET), len(GET)]
EXPECTED_AFTER = [0, len(POST_BODY), len(CHUNKED_BODY), 0, 0]
EXPECTED_BODIES = [b"", POST_BODY, b"\r\n\r\nabc", b"", b""]


def check(driver: Driver) -> None:
    assert driver.heads == EXPECTED_HEADS
    assert driver.after == EXPECTED_AFTER
    assert driver.bodies == EXPECTED_BODIES
    assert driver.framing.mode == HEAD
    assert driver.framing.head_bytes == 0


def test_one_read_is_counted_exactly() -> None:
    driver = Driver()
    driver.feed(STREAM)
    check(driver)


def test_every_split_into_two_reads_is_counted_exactly() -> None:
    for split in range(1, len(STREAM)):
        driver = Driver()
        driver.feed(STREAM[:split])
        driver.feed(STREAM[split:])
        check(driver)


def test_a_byte_per_read_is_counted_exactly() -> None:
    driver = Driver()
    for index in range(len(STREAM)):
        driver.feed(STREAM[index : index + 1])
    check(driver)


def test_a_head_over_the_limit_is_refused_before_it_is_fed() -> None:
    at_limit = b"GET / HTTP/1.1\r\nx: " + b"a" * (100 - 23) + b"\r\n\r\n"
    assert len(at_limit) == 100
    driver = Driver(max_head=100)
    driver.feed(at_limit)
    assert driver.heads == [100]
    driver = Driver(max_head=99)
    with pytest.raises(Over):
        driver.feed(at_limit)
    assert driver.heads == []


def test_a_trailer_over_the_budget_is_refused_before_it_is_fed() -> None:
    body = b"2\r\n{}\r\n0\r\nx-t: " + b"a" * 200 + b"\r\n\r\n"
    Driver(budget=len(body)).feed(CHUNKED_HEAD + body)
    driver = Driver(budget=len(body) - 1)
    with pytest.raises(Over):
        driver.feed(CHUNKED_HEAD + body)
    assert driver.after == []


def test_a_body_over_the_budget_is_refused_before_it_is_fed() -> None:
    head = b"POST / HTTP/1.1\r\ncontent-length: 101\r\n\r\n"
    driver = Driver(budget=100)
    driver.feed(head + b"a" * 100)
    with pytest.raises(Over):
        driver.feed(b"a")

"""The limits the HTTP edge enforces (app/api/edge_protocol.py), and its refusals.

Every refusal is a problem+json written straight on the transport, outside the app: the request
it answers never reached the app, or has to be cut short before the app could finish reading it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from app.settings import ApiSettings

PROBLEM_JSON = b"application/problem+json"


@dataclass(frozen=True)
class EdgeLimits:
    max_header_bytes: int
    max_headers: int
    head_timeout_s: float
    body_timeout_s: float
    max_connections: int
    retry_after_s: int
    keep_alive_s: float = 5.0
    write_timeout_s: float = 10.0
    max_body_bytes: int = 64 * 1024
    max_pipelined: int = 8

    @classmethod
    def from_settings(cls, api: ApiSettings) -> EdgeLimits:
        return cls(
            max_header_bytes=api.max_header_bytes,
            max_headers=api.max_headers,
            head_timeout_s=api.head_timeout_s,
            body_timeout_s=api.body_timeout_s,
            max_connections=api.max_connections,
            retry_after_s=api.retry_after_s,
            keep_alive_s=api.keep_alive_timeout_s,
            write_timeout_s=api.write_timeout_s,
            max_body_bytes=api.max_body_bytes,
            max_pipelined=api.max_pipelined,
        )

    @property
    def tick_s(self) -> float:
        """How often deadlines are checked: a fifth of the shortest timeout, within [50 ms, 1 s]."""
        shortest = min(self.head_timeout_s, self.body_timeout_s, self.keep_alive_s)
        return min(1.0, max(0.05, min(shortest, self.write_timeout_s) / 5))

    @property
    def after_head_budget(self) -> int:
        """The bytes a request may send after its head: its body, a trailer section, and the
        framing of a chunked body (a quarter of the body limit: chunks of 32 bytes or more).
        Past it the request is refused (413) before another byte reaches the parser."""
        return self.max_body_bytes + self.max_header_bytes + max(4096, self.max_body_bytes // 4)


@dataclass(frozen=True)
class Refusal:
    status: int
    title: str
    detail: str  # formatted with `limits`
    # Counted, then logged once per tick: one log line per refused request would let a flood
    # of bad requests cost the process more in logging than in refusing.
    reason: str
    # Its label in orders_http_edge_refusals_total{reason} (app/api/metrics.py).
    slug: str


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


HEAD_TOO_LARGE = Refusal(
    431,
    "Request Header Fields Too Large",
    "the request line and headers may be at most {limits.max_header_bytes} bytes",
    "request heads over API_MAX_HEADER_BYTES",
    "header_too_large",
)
TOO_MANY_HEADERS = Refusal(
    431,
    "Request Header Fields Too Large",
    "a request may carry at most {limits.max_headers} headers (trailers included)",
    "requests with more than API_MAX_HEADERS headers",
    "too_many_headers",
)
BODY_TOO_LARGE = Refusal(
    413,
    "Content Too Large",
    "a request may send at most {limits.after_head_budget} bytes after its headers (body, "
    "chunk framing and trailers)",
    "requests sending more than their body, trailer and framing allowance",
    "body_too_large",
)
HEAD_TIMEOUT = Refusal(
    408,
    "Request Timeout",
    "the request line and headers must arrive within {limits.head_timeout_s} s",
    "heads not complete within API_HEAD_TIMEOUT_S",
    "head_timeout",
)
BODY_TIMEOUT = Refusal(
    408,
    "Request Timeout",
    "the body must arrive within {limits.body_timeout_s} s of the headers",
    "bodies not complete within API_BODY_TIMEOUT_S",
    "body_timeout",
)
TOO_MANY_CONNECTIONS = Refusal(
    503,
    "Service Unavailable",
    "too many connections are open; retry after Retry-After seconds",
    "connections over API_MAX_CONNECTIONS",
    "connection_limit",
)
BAD_REQUEST = Refusal(
    400,
    "Bad Request",
    "the request is not valid HTTP/1.1",
    "requests that are not valid HTTP/1.1",
    "bad_request",
)
# A connection aborted because its client stopped reading its answers (app/api/edge_watch.py).
WRITE_TIMEOUT = "write_timeout"
# Every value of orders_http_edge_refusals_total{reason}.
EDGE_REFUSALS = (
    HEAD_TOO_LARGE.slug,
    TOO_MANY_HEADERS.slug,
    BODY_TOO_LARGE.slug,
    HEAD_TIMEOUT.slug,
    BODY_TIMEOUT.slug,
    TOO_MANY_CONNECTIONS.slug,
    BAD_REQUEST.slug,
    WRITE_TIMEOUT,
)

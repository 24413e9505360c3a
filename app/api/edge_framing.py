"""Where each request's head and body lie in a connection's bytes, known before the parser sees
them: the pure accounting of app/api/edge_protocol.py (no sockets, no event loop).

The bytes are fed to the parser in pieces, each counted before it is fed:
- in a head, a piece runs to the end of the first blank line (CRLF CRLF: llhttp ends a head at
  nothing else) or of the bytes at hand: a head's bytes are counted exactly, and the head refused
  (431) before a byte past API_MAX_HEADER_BYTES is parsed;
- in a body of known length, a piece runs to the end of the body at most;
- in a chunked body, to the end of the first blank line: the last chunk and its trailers end
  with one, so the body ends at a piece's end (no earlier CRLF CRLF can overlap it: the byte
  before the final one is `0`, an extension or a trailer value, never CR or LF).
So a piece completes at most one head, and what follows a message is counted as the next head
from its first byte. After its head a request may send at most `after_head_budget` bytes.
A blank line that straddles two reads is found with the last three bytes fed (`tail`).
"""

from __future__ import annotations

BLANK_LINE = b"\r\n\r\n"

HEAD = 0  # between requests, or in a request line and headers
BODY = 1  # the head is complete; the body's framing is not looked at yet
LENGTH = 2  # in a body of Content-Length bytes
CHUNKED = 3  # in a chunked body (Transfer-Encoding ends in chunked: llhttp refuses any other)

OVER = -1  # piece(): the bytes at hand are over the head limit (in HEAD) or the budget


class Framing:
    __slots__ = (
        "after_head",
        "budget",
        "chunked",
        "head_bytes",
        "left",
        "length",
        "max_head",
        "mode",
        "tail",
    )

    def __init__(self, max_head: int, budget: int) -> None:
        self.max_head = max_head
        self.budget = budget
        self.mode = HEAD
        self.head_bytes = 0  # of the current head, counted before they are fed
        self.after_head = 0  # bytes of the current request after its head
        self.left = 0  # LENGTH: body bytes still to come
        self.tail = b""  # the last bytes fed, while a head or a chunked body continues
        # The head's framing headers, as the protocol's on_header sees them go by: the value of
        # Content-Length (llhttp checked it, and refuses a second one, or one with a
        # Transfer-Encoding), and whether there was a Transfer-Encoding (llhttp refuses one
        # that does not end in chunked).
        self.length = b""
        self.chunked = False

    def piece(self, data: bytes, pos: int) -> int:
        """Where the next piece of `data` from `pos` ends, counted; OVER past a limit."""
        if self.mode == HEAD:
            end = self._through_blank_line(data, pos)
            self.head_bytes += end - pos
            return end if self.head_bytes <= self.max_head else OVER
        if self.mode == LENGTH:
            end = min(len(data), pos + self.left)
            self.left -= end - pos
        else:
            end = self._through_blank_line(data, pos)
        self.after_head += end - pos
        return end if self.after_head <= self.budget else OVER

    def _through_blank_line(self, data: bytes, pos: int) -> int:
        if self.tail:
            found = (self.tail + data[pos : pos + 3]).find(BLANK_LINE)
            if found >= 0:
                return pos + found + 4 - len(self.tail)
        found = data.find(BLANK_LINE, pos)
        return len(data) if found < 0 else found + 4

    def fed(self, data: bytes, end: int) -> None:
        """After data[..end] was fed: remember its last bytes while a head or chunked body goes
        on (a blank line may straddle this read and the next)."""
        if self.mode == CHUNKED or (self.mode == HEAD and self.head_bytes):
            self.tail = (self.tail + data[max(0, end - 3) : end])[-3:]

    def headers_complete(self) -> None:
        self.mode = BODY
        self.head_bytes = 0
        self.after_head = 0
        self.tail = b""

    def body_framing(self) -> None:
        """The head is complete and a body follows: how it is framed."""
        if self.chunked:
            self.mode = CHUNKED
        else:
            self.mode = LENGTH
            self.left = int(self.length) if self.length else 0

    def message_complete(self) -> None:
        self.mode = HEAD
        self.head_bytes = 0
        self.tail = b""
        self.length = b""
        self.chunked = False

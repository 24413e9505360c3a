"""HTTP/1.1 over raw sockets (asyncio streams), for requests no well-behaved client would send:
huge or numerous headers, bytes dripped one a second, connections opened and left idle."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated name keeps its last value
    body: bytes
    raw_head: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, receive_buffer: int | None = None) -> Connection:
        """A connection; with `receive_buffer`, its socket's SO_RCVBUF (set before connecting:
        a small one makes the server's send buffer fill while the client does not read)."""
        if receive_buffer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
            return cls(reader, writer)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        return cls(reader, writer)

    def push(self, data: bytes) -> None:
        """Send without waiting for the server to take it (the rest is buffered here)."""
        self.writer.write(data)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, timeout: float = 5.0) -> RawResponse:
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return RawResponse(int(lines[0].split(" ", 2)[1]), headers, body, head)

    async def closed_within(self, timeout: float) -> float | None:
        """Seconds until the server closes (EOF or reset), reading and dropping what it sends;
        None if it is still open after `timeout`."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return None
        except ConnectionError:
            pass
        return time.monotonic() - started

    def close(self) -> None:
        self.writer.close()


def request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    host: str = "orders",
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in {"POST", "PUT", "PATCH"}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

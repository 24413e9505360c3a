"""Run the API under uvicorn (httptools), with the edge limits and response hygiene.

Hygiene headers go in uvicorn's default headers: the server writes them on every response it
sends, the app's and its own (a 500 from an exception, a 400 for a malformed request, the
refusals of app/api/edge_protocol.py) at no cost per request in Python beyond uvicorn's own
header loop; an ASGI middleware would miss the responses written outside the app.
"""

from __future__ import annotations

import asyncio
import functools
from typing import cast

import uvicorn
from starlette.types import ASGIApp

from app.api.edge_limits import EdgeLimits
from app.api.edge_protocol import EdgeProtocol
from app.api.edge_watch import ConnectionWatch
from app.api.metrics import count_edge_refusal
from app.settings import Settings

# Every response carries personal or per-request data: never cached, never content-sniffed.
HYGIENE_HEADERS = [("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store")]


def edge_protocol(settings: Settings) -> type[asyncio.Protocol]:
    """The protocol factory uvicorn calls once per connection, with its own arguments."""
    limits = EdgeLimits.from_settings(settings.api)
    watch = ConnectionWatch(limits, count_edge_refusal if settings.metrics.enabled else None)
    factory = functools.partial(EdgeProtocol, limits=limits, watch=watch)
    return cast(type[asyncio.Protocol], factory)


def serve(app: ASGIApp, settings: Settings, host: str, port: int, access_log: bool) -> None:
    api = settings.api
    uvicorn.run(
        app,
        host=host,
        port=port,
        http=edge_protocol(settings),
        timeout_keep_alive=api.keep_alive_timeout_s,  # kept by EdgeProtocol as a deadline
        # No WebSocket: an Upgrade request is answered as plain HTTP (with the hygiene headers),
        # not handed to the websockets library (whose 403 carried none of them).
        ws="none",
        backlog=api.backlog,
        server_header=False,
        headers=HYGIENE_HEADERS,
        log_level=settings.log_level.lower(),
        access_log=access_log,
    )

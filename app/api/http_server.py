"""Run the API under uvicorn (httptools), with the edge limits and response hygiene: one process,
or several sharing the listening socket (`orders api --workers N`).

Hygiene headers go in uvicorn's default headers: the server writes them on every response it
sends, the app's and its own (a 500 from an exception, a 400 for a malformed request, the
refusals of app/api/edge_protocol.py) at no cost per request in Python beyond uvicorn's own
header loop; an ASGI middleware would miss the responses written outside the app.

Several processes: uvicorn's supervisor (uvicorn.supervisors.Multiprocess, 0.54) binds the
socket, then starts each process with multiprocessing's "spawn", handing it its Config pickled:
so the app is an import string and a factory (WORKER_APP), and the protocol class is imported by
name in each process (SettingsEdgeProtocol), which builds its own limits and ConnectionWatch
from its own settings. The supervisor pings each process every half second and replaces one that
died or stops answering for API_WORKERS_HEALTHCHECK_TIMEOUT_S (5 s: timeout_worker_healthcheck);
a process that fails before it serves stops them all. On SIGTERM or SIGINT it sends SIGTERM to
each and waits for each: every process drains as one process does (its connections, then its
lifespan: the producer flushed).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, cast

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp
from uvicorn.config import Config
from uvicorn.server import ServerState

from app.api.edge_limits import EdgeLimits
from app.api.edge_protocol import EdgeProtocol
from app.api.edge_watch import ConnectionWatch
from app.api.metrics import count_edge_refusal
from app.api.process_set import prepared_for
from app.log_config import configure_logging
from app.settings import Settings, get_settings

# Every response carries personal or per-request data: never cached, never content-sniffed.
HYGIENE_HEADERS = [("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store")]
# What each of several processes serves (uvicorn imports it there, factory=True).
WORKER_APP = "app.api.http_server:worker_app"


def _edge(settings: Settings) -> tuple[EdgeLimits, ConnectionWatch]:
    limits = EdgeLimits.from_settings(settings.api)
    return limits, ConnectionWatch(limits, count_edge_refusal if settings.metrics.enabled else None)


def edge_protocol(settings: Settings) -> type[asyncio.Protocol]:
    """The protocol factory uvicorn calls once per connection, with its own arguments."""
    limits, watch = _edge(settings)
    factory = functools.partial(EdgeProtocol, limits=limits, watch=watch)
    return cast(type[asyncio.Protocol], factory)


@functools.cache
def _edge_of_this_process() -> tuple[EdgeLimits, ConnectionWatch]:
    return _edge(get_settings())


class SettingsEdgeProtocol(EdgeProtocol):
    """EdgeProtocol with the limits of this process's settings, for a process of a set: one
    ConnectionWatch per process (its timer runs on that process's loop)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        limits, watch = _edge_of_this_process()
        super().__init__(config, server_state, app_state, _loop, limits=limits, watch=watch)


def worker_app() -> FastAPI:
    """The app of one of several API processes, from the environment the parent prepared."""
    from app.api.app import create_app

    settings = get_settings()
    configure_logging(settings.log_level)
    return create_app(settings)


def _options(settings: Settings, host: str, port: int, access_log: bool) -> dict[str, Any]:
    api = settings.api
    return {
        "host": host,
        "port": port,
        "timeout_keep_alive": api.keep_alive_timeout_s,  # kept by EdgeProtocol as a deadline
        # No WebSocket: an Upgrade request is answered as plain HTTP (with the hygiene headers),
        # not handed to the websockets library (whose 403 carried none of them).
        "ws": "none",
        "backlog": api.backlog,
        "server_header": False,
        "headers": HYGIENE_HEADERS,
        "log_level": settings.log_level.lower(),
        "access_log": access_log,
    }


def serve(app: ASGIApp, settings: Settings, host: str, port: int, access_log: bool) -> None:
    uvicorn.run(app, http=edge_protocol(settings), **_options(settings, host, port, access_log))


def serve_processes(
    settings: Settings, host: str, port: int, access_log: bool, workers: int
) -> None:
    """`workers` (> 1) API processes on one socket, sharing a prepared directory
    (app/api/process_set.py); returns once they have all drained and exited."""
    with prepared_for(workers):
        uvicorn.run(
            WORKER_APP,
            factory=True,
            workers=workers,
            http=SettingsEdgeProtocol,
            timeout_worker_healthcheck=settings.api.workers_healthcheck_timeout_s,
            **_options(settings, host, port, access_log),
        )

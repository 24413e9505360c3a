"""The worker's own small HTTP server: GET /metrics, /healthz and /readyz, for Prometheus and for
orchestrators, on WORKER_METRICS_HOST:WORKER_METRICS_PORT.

It runs in the worker's event loop (uvicorn + a tiny Starlette app), so /healthz answering at all
says that loop runs. Bodies say a status only ({"status": ...}); why a member is not ready goes to
its log (app.worker.stall_detector). It is an internal port, held small: no access log, h11 with
a small head, few connections at once, short keep-alive.

Pitfall: uvicorn's `Server.serve()` installs its own SIGINT/SIGTERM handlers (and re-raises the
signal after shutting down); the worker's runner owns those signals, so `_QuietServer` captures
none. The socket is bound here, before uvicorn sees it, so that a port in use fails the start with
a clear error instead of uvicorn's `sys.exit` inside a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Generator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger(__name__)

# Bounds of an internal port: a scrape or a probe needs one small request at a time.
_MAX_CONNECTIONS = 16  # past this uvicorn answers 503
_MAX_HEAD_BYTES = 16 * 1024
_KEEP_ALIVE_S = 5


class StatusServerError(Exception):
    """The server cannot listen where it was told to (the port is taken, the host unknown)."""


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signals alone (the runner owns them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def status_app(
    ready: Callable[[], bool], metrics: bool, registry: CollectorRegistry = REGISTRY
) -> Starlette:
    """/healthz, /readyz (`ready()`), and /metrics unless metrics are off (then 404)."""

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        if ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready"}, status_code=503)

    async def scrape(_: Request) -> Response:
        # Async on purpose: it runs in the loop's thread, the only one that updates the metrics.
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    if metrics:
        routes.append(Route("/metrics", scrape, methods=["GET"]))
    return Starlette(routes=routes)


class StatusServer:
    """Bind at `start()` (raising StatusServerError), serve in a task, `stop()` when done."""

    def __init__(self, host: str, port: int, app: Starlette) -> None:
        self._host, self._port = host, port
        self._config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,  # the process's logging stays as app.log_config set it
            log_level="warning",  # uvicorn's own start and stop lines: ours says where it is
            access_log=False,
            server_header=False,
            limit_concurrency=_MAX_CONNECTIONS,
            timeout_keep_alive=_KEEP_ALIVE_S,
            h11_max_incomplete_event_size=_MAX_HEAD_BYTES,
        )
        self._server = _QuietServer(self._config)
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one chosen by the system when configured as 0)."""
        assert self._socket is not None, "not started"
        port: int = self._socket.getsockname()[1]
        return port

    async def start(self) -> None:
        self._socket = _bind(self._host, self._port)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        # uvicorn says it has started with a flag only, not an event.
        while not self._server.started and not self._task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raises whatever stopped it
        log.info(
            "worker status server on http://%s:%d (/metrics /healthz /readyz)",
            self._host,
            self.port,
        )

    async def stop(self, timeout: float) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, timeout)
        except TimeoutError:
            log.warning("the status server did not stop within %.0fs", timeout)
        except Exception:
            log.exception("the status server failed")
        finally:
            if self._socket is not None:
                self._socket.close()


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or StatusServerError naming the settings to change."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        msg = f"cannot listen on {host}:{port} (WORKER_METRICS_HOST): {exc}"
        raise StatusServerError(msg) from exc
    try:
        # As uvicorn does: a restarted worker may rebind at once (TIME_WAIT); on Linux this
        # never lets two listeners share a port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        msg = (
            f"cannot listen on {host}:{port} (WORKER_METRICS_HOST/WORKER_METRICS_PORT): {exc}; "
            "give each worker its own port, or WORKER_METRICS_PORT=0 for no HTTP server"
        )
        raise StatusServerError(msg) from exc
    return sock

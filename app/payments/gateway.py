"""`orders gateway`: a simulated payment gateway, for the payments worker, its tests and bench.

    POST /charges                      {charge_key, order_id, customer_id, amount, currency,
                                        request_id}: 201 charged, 200 the same key again
                                        (`replayed: true`), 409 the same key for another charge,
                                        422 a body it cannot read, 503 an injected error
    GET  /charges/{charge_key}         the charge, or 404
    GET  /customers/{id}/charges       the customer's charged order ids, in the order charged
    GET  /stats                        counters the tests check ("charged exactly once")

Each call takes GATEWAY_LATENCY_MS (an asyncio sleep: concurrent calls overlap, as a remote
service's do). A GATEWAY_ERROR_RATE share is answered 503 without charging; a
GATEWAY_TIMEOUT_RATE share is charged but answered only after `timeout_answer_s` (longer than
any client's timeout), as a real gateway's reply may be lost after it charged: only the charge
key makes the caller's retry safe. The draws come from a seeded generator when `seed` is given.

A simulator: its state is in memory, and a restart forgets every charge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.payments.charges import ChargeRequest
from app.payments.gateway_ledger import ChargeConflictError, GatewayLedger
from app.settings import GatewaySettings

Fault = Literal["error", "timeout"] | None


@dataclass(frozen=True)
class GatewayBehaviour:
    latency_s: float = 0.05
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_answer_s: float = 60.0  # an injected timeout's answer comes this late
    seed: int | None = None

    @classmethod
    def from_settings(
        cls, settings: GatewaySettings, seed: int | None = None, timeout_answer_s: float = 60.0
    ) -> GatewayBehaviour:
        return cls(
            latency_s=settings.latency_ms / 1000,
            error_rate=settings.error_rate,
            timeout_rate=settings.timeout_rate,
            timeout_answer_s=timeout_answer_s,
            seed=seed,
        )


def draw_fault(rng: random.Random, behaviour: GatewayBehaviour) -> Fault:
    """One draw per call: an injected error, an injected timeout, or neither."""
    roll = rng.random()
    if roll < behaviour.error_rate:
        return "error"
    if roll < behaviour.error_rate + behaviour.timeout_rate:
        return "timeout"
    return None


def _problem(status: int, title: str, detail: str) -> Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def gateway_app(behaviour: GatewayBehaviour, ledger: GatewayLedger | None = None) -> Starlette:
    books = ledger if ledger is not None else GatewayLedger()
    rng = random.Random(behaviour.seed)

    async def post_charge(request: Request) -> Response:
        try:
            charge_request = ChargeRequest.model_validate_json(await request.body())
        except ClientDisconnect:  # the caller gave up before sending its body: no call
            return Response(status_code=400)
        except ValidationError as exc:
            detail = json.dumps(exc.errors(include_url=False, include_context=False), default=str)
            return _problem(422, "invalid charge", detail)
        fault = draw_fault(rng, behaviour)
        books.call_started(charge_request)
        try:
            if fault == "error":
                books.injected_errors += 1
                await asyncio.sleep(behaviour.latency_s)
                return _problem(503, "unavailable", "injected error: nothing was charged")
            try:
                charge = books.charge(charge_request, datetime.now(UTC))
            except ChargeConflictError as exc:
                await asyncio.sleep(behaviour.latency_s)
                return _problem(409, "charge key reused", str(exc))
            await asyncio.sleep(behaviour.latency_s)
        finally:
            books.call_served(charge_request)
        if fault == "timeout":
            books.injected_timeouts += 1
            await asyncio.sleep(behaviour.timeout_answer_s)  # charged; the answer comes too late
        status = 200 if charge.replayed else 201
        return Response(charge.model_dump_json(), status_code=status, media_type="application/json")

    async def get_charge(request: Request) -> Response:
        charge = books.find(request.path_params["charge_key"])
        if charge is None:
            return _problem(404, "no such charge", "this charge key was never charged")
        return Response(charge.model_dump_json(), media_type="application/json")

    async def customer_charges(request: Request) -> Response:
        customer_id = request.path_params["customer_id"]
        orders = [str(order_id) for order_id in books.customer_orders(customer_id)]
        return JSONResponse({"customer_id": customer_id, "order_ids": orders})

    async def stats(_: Request) -> Response:
        return JSONResponse(books.stats())

    return Starlette(
        routes=[
            Route("/charges", post_charge, methods=["POST"]),
            Route("/charges/{charge_key}", get_charge, methods=["GET"]),
            Route("/customers/{customer_id}/charges", customer_charges, methods=["GET"]),
            Route("/stats", stats, methods=["GET"]),
        ]
    )


def _config(app: Starlette, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http="httptools",
        ws="none",
        lifespan="off",
        backlog=4096,  # the bench opens hundreds of connections at once
        access_log=False,
        server_header=False,
        log_level=log_level.lower(),
        # Injected timeouts hold their answers for a minute: a stop does not wait for them.
        timeout_graceful_shutdown=1,
    )


def serve_gateway(behaviour: GatewayBehaviour, host: str, port: int, log_level: str) -> None:
    """`orders gateway`: serve until SIGINT/SIGTERM."""
    uvicorn.Server(_config(gateway_app(behaviour), host, port, log_level)).run()


class _InProcessServer(uvicorn.Server):
    """Leaves the process's signals alone: it runs inside someone else's event loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@contextlib.asynccontextmanager
async def gateway_in_process(
    behaviour: GatewayBehaviour, ledger: GatewayLedger
) -> AsyncIterator[str]:
    """The gateway in the current event loop on a free loopback port; yields its base URL.
    For tests that need no process of their own (the ledger stays inspectable)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Inherited by accepted connections: measured, without it each answer under the default
    # event loop waited ~40 ms for a delayed ACK (uvicorn's own sockets under uvloop did not).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    server = _InProcessServer(_config(gateway_app(behaviour, ledger), "127.0.0.1", 0, "warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:  # uvicorn says it started with a flag, not an event
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait([task], timeout=10)
        sock.close()

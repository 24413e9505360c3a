"""The whole stack as real processes, as `make run` starts it: `orders api` on a free loopback port
and N `orders worker`s of one group, each with the settings of one test. The API verifies tokens
with the settings' local key (AUTH_* passed on), so `client()` is an authenticated client."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.settings import Settings
from tests.integration.api_client import bearer, token_for
from tests.integration.processes import OrdersProcess

ASSIGNED = re.compile(r"partitions assigned: \[([0-9, ]*)\]")
# uvicorn re-raises the SIGTERM it handled after a graceful shutdown (scripts/run-stack.py).
CLEAN_EXITS = (0, -signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class LiveStack:
    base_url: str
    api: OrdersProcess
    workers: list[OrdersProcess]
    token: str  # a service's, with both scopes
    exit_codes: list[int] = field(default_factory=list)

    def client(self, **options: Any) -> httpx.AsyncClient:
        """An HTTP client of the API, sending the service's bearer token."""
        return httpx.AsyncClient(base_url=self.base_url, headers=bearer(self.token), **options)

    def assignments(self) -> list[set[int]]:
        """Each worker's partitions, as its last `partitions assigned` line says."""
        found = []
        for worker in self.workers:
            lines = ASSIGNED.findall(worker.output())
            last = lines[-1] if lines else ""
            found.append({int(p) for p in last.split(",") if p.strip()})
        return found

    def stop(self, timeout: float = 40.0) -> list[int]:
        """SIGTERM to all at once (each drains), then wait for each; the exit codes.
        One signal only: a second one makes a worker exit at once, without draining."""
        processes = [self.api, *self.workers]
        for process in processes:
            process.signal(signal.SIGTERM)
        self.exit_codes = []
        for process in processes:
            try:
                self.exit_codes.append(process.wait(timeout))
            except subprocess.TimeoutExpired:
                self.exit_codes.append(process.kill())
        return self.exit_codes

    def clean_exit(self) -> bool:
        return all(code in CLEAN_EXITS for code in self.exit_codes)

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"--- {p.command} {p.pid} ---\n{p.output()[-tail:]}" for p in [self.api, *self.workers]
        )


async def _until_ready(stack: LiveStack, partitions: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=2.0) as client:
        while loop.time() < deadline:
            if not all(p.alive() for p in [stack.api, *stack.workers]):
                break
            try:
                ready = (await client.get("/readyz")).status_code == 200
            except httpx.TransportError:
                ready = False
            owned = stack.assignments()
            # A settled group: every partition owned by exactly one member, each member busy.
            settled = all(owned) and sorted(p for mine in owned for p in mine) == list(
                range(partitions)
            )
            if ready and settled:
                return
            await asyncio.sleep(0.2)
    msg = f"the stack did not get ready within {timeout}s\n{stack.logs()}"
    raise AssertionError(msg)


@asynccontextmanager
async def live_stack(
    settings: Settings,
    log_dir: Path,
    workers: int = 2,
    timeout: float = 60.0,
    worker_env: dict[str, str] | None = None,
) -> AsyncIterator[LiveStack]:
    """Start the API and `workers` workers (with `worker_env` besides the settings: a fault
    point's variables); yield once the API is ready and the group settled. Stops them all on
    the way out (their exit codes in `exit_codes`)."""
    port = free_port()
    api = OrdersProcess("api", settings, log_dir, API_HOST="127.0.0.1", API_PORT=str(port))
    env = worker_env or {}
    group = [OrdersProcess("worker", settings, log_dir, **env) for _ in range(workers)]
    stack = LiveStack(f"http://127.0.0.1:{port}", api, group, token_for(settings))
    try:
        await _until_ready(stack, settings.kafka.partitions, timeout)
        yield stack
    finally:
        await asyncio.to_thread(stack.stop)

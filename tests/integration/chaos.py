"""Tools for the fault tests: a pool of worker processes to kill, and a watch on positions."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from app.settings import Settings
from tests.integration.oracle import stored_positions
from tests.integration.processes import OrdersProcess


@dataclass
class WorkerPool:
    """Worker processes of one group, started, killed and stopped as a scenario says."""

    settings: Settings
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    workers: list[OrdersProcess] = field(default_factory=list)
    killed: int = 0

    def start(self, count: int = 1, **env: str) -> list[OrdersProcess]:
        started = [
            OrdersProcess("worker", self.settings, self.log_dir, **{**self.env, **env})
            for _ in range(count)
        ]
        self.workers += started
        return started

    @property
    def alive(self) -> list[OrdersProcess]:
        return [worker for worker in self.workers if worker.alive()]

    def kill_one(self) -> OrdersProcess | None:
        candidates = self.alive
        if not candidates:
            return None
        victim = random.choice(candidates)
        victim.kill()
        self.killed += 1
        return victim

    def stop(self, count: int) -> list[int]:
        """Gracefully stop `count` workers (SIGTERM, drain); their exit codes."""
        return [worker.stop() for worker in self.alive[:count]]

    def stop_all(self) -> list[int]:
        """Stop every live worker gracefully; their exit codes. Safe to call twice."""
        codes = [worker.stop() for worker in self.alive]
        for worker in self.workers:
            worker.kill()  # no-op for those already gone; closes every log file
        return codes

    def outputs(self) -> str:
        return "\n".join(worker.output() for worker in self.workers)


@dataclass
class PositionWatch:
    """Samples a group's stored positions; any partition that ever moves back is recorded."""

    engine: AsyncEngine
    group_id: str
    topic: str
    regressions: list[tuple[int, int, int]] = field(default_factory=list)
    samples: int = 0
    _last: dict[int, int] = field(default_factory=dict)

    async def sample(self) -> None:
        with contextlib.suppress(Exception):  # the database may be down in some scenarios
            current = await stored_positions(self.engine, self.group_id, self.topic)
            for partition, offset in current.items():
                before = self._last.get(partition, -1)
                if offset < before:
                    self.regressions.append((partition, before, offset))
                self._last[partition] = max(before, offset)
            self.samples += 1

    async def run(self, interval: float = 0.1) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(interval)


@asynccontextmanager
async def watching_positions(
    engine: AsyncEngine, settings: Settings
) -> AsyncIterator[PositionWatch]:
    watch = PositionWatch(engine, settings.worker.group_id, settings.kafka.orders_topic)
    task = asyncio.create_task(watch.run())
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await watch.sample()

"""The exact mode's fence against a zombie, on the real broker and PostgreSQL.

Two `orders analytics` members (exact mode) count a stream. One is frozen (SIGSTOP) past its
session timeout: the group gives its partitions to the other, which counts on from the positions
stored in PostgreSQL. Then the frozen one is woken (SIGCONT) with the batch it had in hand, or
buffered, from before: a zombie. Its batch begins where the positions no longer are, and the
fence (app/analytics/exact.py) must refuse it: the zombie says so, and every window still holds
exactly the orders the broker appended in it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path
from typing import IO

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.positions import read_positions
from app.lab.analytics.stream import OrderSource
from app.process_env import settings_env
from app.settings import AnalyticsSettings, Settings
from app.topics import ensure_topics
from tests.integration.conftest import make_settings
from tests.integration.endpoints import Endpoints
from tests.integration.kafka_tools import end_offsets, read_topic
from tests.integration.test_analytics_exact import WINDOW_S, expected_windows, stored_windows

SESSION_MS = 6000  # the broker's smallest session timeout (group.min.session.timeout.ms)
# Freezes tried until one leaves the zombie a batch to store. Often the woken member learns it
# lost the group before storing (correct, but nothing for the fence to refuse): on a loaded CI
# machine three freezes once all went that way.
ATTEMPTS = 6
WAIT_S = 60.0


class Member:
    """An `orders analytics` child process, everything it logs kept in a file."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path, file: IO[bytes]) -> None:
        self.process, self.log, self._file = process, log, file

    @classmethod
    async def spawn(cls, settings: Settings, log: Path) -> Member:
        file = log.open("wb")
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "app.cli", "analytics"),
            env=settings_env(settings, LOG_LEVEL="INFO"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=file,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(process, log, file)

    def said(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)

    async def stop(self) -> int:
        self.signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT_S):
            code = await self.process.wait()
        self._file.close()
        return code

    async def end(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        await self.process.wait()
        self._file.close()


async def wait_for(condition: object, what: str) -> None:
    assert callable(condition)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not condition():
        assert loop.time() < deadline, f"waited {WAIT_S}s for {what}"
        await asyncio.sleep(0.2)


async def stream(settings: Settings, stop: asyncio.Event) -> int:
    """Orders at a steady rate until `stop`: the members always have a batch in hand."""
    async with OrderSource(settings.kafka) as source:
        while not stop.is_set():
            await source.send(settings.kafka.orders_topic, 50, 200.0)
    return source.orders


async def test_a_zombie_member_is_fenced_and_the_windows_stay_exact(
    endpoints: Endpoints, database_url: str, engine: AsyncEngine, run_id: str, tmp_path: Path
) -> None:
    settings = make_settings(
        endpoints, database_url, session_timeout_ms=SESSION_MS, heartbeat_interval_ms=1000
    )
    settings = settings.model_copy(
        update={
            "analytics": AnalyticsSettings(
                group_id=f"analytics-zombie-{run_id}",
                mode="exact",
                window_s=WINDOW_S,
                grace_s=1.0,
                max_records=20,  # small batches: one is always in hand or buffered
            )
        }
    )
    await ensure_topics(settings.kafka)
    group, topic = settings.analytics.group_id, settings.kafka.orders_topic
    zombie = await Member.spawn(settings, tmp_path / "zombie.log")
    other = await Member.spawn(settings, tmp_path / "other.log")
    stop = asyncio.Event()
    producing = asyncio.create_task(stream(settings, stop))
    try:
        await wait_for(
            lambda: all("analytics partitions assigned" in m.said() for m in (zombie, other)),
            "both members to be assigned partitions",
        )
        await asyncio.sleep(3.0)  # the group settled, both counting
        for _ in range(ATTEMPTS):
            zombie.signal(signal.SIGSTOP)
            await asyncio.sleep(SESSION_MS / 1000 + 4)  # its partitions move to the other
            zombie.signal(signal.SIGCONT)
            await asyncio.sleep(4.0)
            if "fenced: stored position" in zombie.said():
                break
        stop.set()
        orders = await producing
        ends = {p: end for p, end in (await end_offsets(endpoints.kafka_bootstrap, topic)).items()}

        async def caught_up() -> bool:
            async with engine.connect() as connection:
                stored = await read_positions(connection, group, topic, list(ends))
            return all(stored.get(p, 0) >= end for p, end in ends.items() if end > 0)

        async with asyncio.timeout(WAIT_S):
            while not await caught_up():  # noqa: ASYNC110 - polling PostgreSQL
                await asyncio.sleep(0.2)
        assert await zombie.stop() == 0
        assert await other.stop() == 0
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await producing
        for member in (zombie, other):
            await member.end()

    said = zombie.said()
    assert "fenced: stored position" in said, said[-3000:]
    stats = re.findall(r"stopped: AnalyticsStats\(.*fenced=(\d+)", said)
    assert stats, said[-3000:]
    assert int(stats[-1]) > 0
    records = await read_topic(endpoints.kafka_bootstrap, topic)
    assert len(records) == orders
    assert await stored_windows(engine, group) == expected_windows(records)

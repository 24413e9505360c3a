"""`orders lag` statuses and `orders lag --watch` against the real services.

A stall is made by hand in PostgreSQL (as the schema's owner): a position put behind the log end
and dated an hour back, as a worker stuck behind one record would leave it."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_engine
from app.lag_status import Status
from app.operations.commands import _explain
from app.operations.lag import group_lag
from app.operations.lag_report import EXIT_STALLED, assess
from app.operations.lag_watch import watch
from app.settings import DatabaseSettings, Settings
from tests.integration.load import customers_for, orders_accepted
from tests.integration.oracle import wait_until_stored
from tests.integration.processes import settings_env
from tests.integration.worker_harness import worker_running

ORDERS = str(Path(sys.executable).with_name("orders"))
OWNER = "w-test"
BOUND_S = 5


async def orders_lag(settings: Settings, *args: str) -> tuple[int, str]:
    done = await asyncio.to_thread(
        subprocess.run,
        [ORDERS, "lag", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert not done.stderr.strip(), done.stderr
    return done.returncode, done.stdout


async def lag_json(settings: Settings, *args: str) -> tuple[int, dict[int, dict[str, Any]]]:
    code, out = await orders_lag(settings, "--json", *args)
    return code, {entry["partition"]: entry for entry in json.loads(out)}


async def all_stored(settings: Settings, engine: AsyncEngine, run_id: str) -> float:
    """Orders on several partitions, stored by a worker that then stops; returns when the last
    order was accepted (epoch seconds)."""
    expected = await orders_accepted(settings, customers_for(run_id, 12), per_customer=5)
    accepted_at = time.time()
    async with worker_running(settings, engine):
        assert await wait_until_stored(engine, expected) == 60
    return accepted_at


async def set_positions(
    owner_engine: AsyncEngine,
    settings: Settings,
    assignments: str,
    partition: int | None = None,
    **values: Any,
) -> None:
    """UPDATE the group's positions (one partition's, or all) as the schema's owner."""
    where = "group_id = :group_id AND topic = :topic"
    if partition is not None:
        where += " AND partition = :partition"
    scope = {"group_id": settings.worker.group_id, "topic": settings.kafka.orders_topic}
    async with owner_engine.begin() as connection:
        await connection.execute(
            text(f"UPDATE consumer_positions SET {assignments} WHERE {where}"),
            {**scope, "partition": partition, **values},
        )


async def test_every_partition_is_ok_once_the_orders_are_stored(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    await all_stored(settings, engine, run_id)
    code, shown = await lag_json(settings)
    assert code == 0
    assert len(shown) == 6
    assert {(p["lag"], p["status"]) for p in shown.values()} == {(0, "OK")}
    assert sum(p["log_end"] for p in shown.values()) >= 60
    assert all(p["stored"] == p["log_end"] for p in shown.values() if p["log_end"])
    stored = [p for p in shown.values() if p["stored"] is not None]
    assert stored
    assert all(p["idle_s"] < 120 and p["owner"] for p in stored)  # PostgreSQL's own clock

    code, table = await orders_lag(settings)
    assert code == 0
    assert table.split("\n")[1].split()[5] == "STATUS"
    assert table.strip().splitlines()[-1].split() == ["total", "0"]


async def test_a_still_position_behind_the_log_end_is_stalled_then_stopped(
    settings: Settings, engine: AsyncEngine, owner_engine: AsyncEngine, run_id: str
) -> None:
    accepted_at = await all_stored(settings, engine, run_id)
    rows = await group_lag(settings, engine)
    stuck, busy = [row.partition for row in rows if row.log_end >= 3][:2]
    # Behind the log end by 2 records, unmoved for an hour; every position has one owner.
    hour_ago = "updated_at = now() - interval '1 hour'"
    await set_positions(owner_engine, settings, f"owner = :owner, {hour_ago}", owner=OWNER)
    await set_positions(owner_engine, settings, "next_offset = next_offset - 2", stuck)
    # The records it waits for were appended at least the bound ago. The bound leaves `orders
    # lag` time to start and read before the busy partition's fresh move grows as old.
    await asyncio.sleep(max(0.0, accepted_at + BOUND_S + 0.2 - time.time()))

    # Its owner moved another partition a moment ago: this one partition is stuck.
    await set_positions(owner_engine, settings, "updated_at = now()", busy)
    code, shown = await lag_json(settings, "--stall-after", str(BOUND_S))
    assert code == EXIT_STALLED
    assert shown[stuck]["status"] == "STALLED"
    assert shown[stuck]["lag"] == 2
    assert shown[stuck]["owner"] == OWNER
    assert shown[stuck]["idle_s"] >= 3599
    assert (
        BOUND_S <= shown[stuck]["lagging_for_s"] < 600
    )  # from the records' append time, not an hour
    assert {p["status"] for n, p in shown.items() if n != stuck} == {"OK"}
    await set_positions(owner_engine, settings, "updated_at = now()", busy)  # still busy
    code, table = await orders_lag(settings, "--stall-after", str(BOUND_S))
    assert code == EXIT_STALLED
    [line] = [line for line in table.splitlines() if line.split()[:1] == [str(stuck)]]
    assert line.split()[4:6] == ["2", "STALLED"]

    # With the default bound (30 s) the records have not waited long enough: no alarm yet.
    code, shown = await lag_json(settings)
    assert code == 0
    assert shown[stuck]["status"] == "OK"

    # Nothing of its owner moved for the bound: the member is gone or wedged as a whole.
    await set_positions(owner_engine, settings, hour_ago)
    code, shown = await lag_json(settings, "--stall-after", str(BOUND_S))
    assert code == EXIT_STALLED
    assert shown[stuck]["status"] == "STOPPED"
    assert {p["status"] for n, p in shown.items() if n != stuck} == {"OK"}


async def test_a_quiet_partition_that_just_received_an_order_is_not_stalled(
    settings: Settings, engine: AsyncEngine, owner_engine: AsyncEngine, run_id: str
) -> None:
    await all_stored(settings, engine, run_id)
    await set_positions(owner_engine, settings, "updated_at = now() - interval '1 hour'")
    # A customer stored before: its partition has a position (12 customers may leave some of
    # the 6 partitions without one), quiet for an hour, and now one order more (no
    # Idempotency-Key: the first run's key for that customer would answer without producing).
    await orders_accepted(settings, customers_for(run_id, 12)[:1], per_customer=1, keyed=False)
    now = time.time()
    rows = await group_lag(settings, engine)
    [waiting] = [row for row in rows if row.lag]
    assert waiting.lag == 1
    assert waiting.idle_s is not None
    assert waiting.idle_s >= 3599
    assert waiting.lag_began_at is not None
    assert abs(waiting.lag_began_at - now) < 5  # the broker's append time of that order
    [report] = [r for r in assess(rows, now=time.time(), stall_after_s=10) if r.row.lag]
    assert report.status is Status.OK


async def test_watch_draws_every_partition_and_outlives_a_database_that_is_away(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    await all_stored(settings, engine, run_id)
    console = Console(width=140, record=True, force_terminal=True, color_system=None)
    await watch(
        settings,
        engine,
        interval_s=0.2,
        stall_after_s=30.0,
        explain=lambda exc: _explain(settings, exc),
        console=console,
        refreshes=3,
    )
    drawn = console.export_text()
    assert drawn.count(f"group {settings.worker.group_id} on {settings.kafka.orders_topic}") >= 3
    for partition in range(6):
        assert f"│ {partition:>5} │" in drawn
    assert "failed" not in drawn
    assert "│ total │" in drawn

    # A database nobody listens on: every sample fails, the view says so and keeps going.
    real = urlsplit(str(settings.database.url))
    unheard = real._replace(netloc=real.netloc.replace(f":{real.port}", ":1"))
    database = DatabaseSettings(url=urlunsplit(unheard), connect_timeout_s=1)
    away = settings.model_copy(update={"database": database})
    nowhere = create_engine(away.database)
    try:
        console = Console(width=140, record=True, force_terminal=True, color_system=None)
        await watch(
            away,
            nowhere,
            interval_s=0.1,
            stall_after_s=30.0,
            explain=lambda exc: _explain(away, exc),
            console=console,
            refreshes=2,
        )
    finally:
        await nowhere.dispose()
    said = " ".join(console.export_text().split())
    assert said.count("last sample failed") >= 2
    assert f"PostgreSQL at {real.hostname}:1{real.path}" in said


async def test_watch_in_a_terminal_refreshes_in_place_and_exits_0_on_ctrl_c(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    await all_stored(settings, engine, run_id)
    controller, terminal = pty.openpty()
    watching = await asyncio.create_subprocess_exec(
        ORDERS,
        "lag",
        "--watch",
        "--interval",
        "0.3",
        stdin=terminal,
        stdout=terminal,
        stderr=asyncio.subprocess.PIPE,
        env=settings_env(settings, COLUMNS="140", LINES="40", TERM="xterm"),
    )
    os.close(terminal)
    title = f"group {settings.worker.group_id}".encode()
    drawn = bytearray()
    closing = threading.Event()
    loop = asyncio.get_running_loop()
    three_frames = asyncio.Event()

    def drain() -> None:  # always read: a child blocked writing to a full terminal never exits
        while True:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if not ready:
                if closing.is_set():
                    return
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not chunk:
                return
            drawn.extend(chunk)
            if drawn.count(title) >= 3:
                loop.call_soon_threadsafe(three_frames.set)

    reading = asyncio.create_task(asyncio.to_thread(drain))
    try:
        async with asyncio.timeout(60):
            await three_frames.wait()
        assert b"\x1b[" in drawn  # cursor movements: redrawn in place, not appended
        watching.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            _, error = await watching.communicate()
    finally:
        if watching.returncode is None:
            watching.kill()
            await watching.wait()
        closing.set()
        await reading
        os.close(controller)
    assert watching.returncode == 0, error
    assert b"Traceback" not in error

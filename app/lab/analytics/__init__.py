"""`orders lab analytics`: the course's real-time analytics, its error measured under kill -9.

The course (kafka-data-flow-course.md, "Scenario 2: Real-time Analytics"): "High throughput is
priority", "Some message loss acceptable", "Low latency required"; solution: "Auto-commit
offsets for simplicity" (with `acks=1` and larger batches on the producer's side).

How it is checked: one stream of real orders (app.contract records keyed by customer, on a
LogAppendTime topic of the run's own) is counted at once by two `orders analytics` members,
child processes in groups of their own: ANALYTICS_MODE=fast (the course's way: auto-commit,
an upsert per batch) and ANALYTICS_MODE=exact (windows and positions in one PostgreSQL
transaction). While the stream is sent, each member is killed -9 every few seconds, at whatever
it is doing, and started again at once. Once both have read the whole topic and stopped, each
one's windows are summed and set against what the broker acknowledged: `counted - orders` is the
error. Then each mode alone counts a burst of orders without faults: its throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from decimal import Decimal

from aiokafka.structs import TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analytics import window_store
from app.db.engine import create_engine
from app.db.positions import delete_group_positions
from app.lab.analytics.members import AnalyticsSlot, check_tables, counted, kill_every
from app.lab.analytics.stream import CURRENCIES, OrderSource, create_orders_topic
from app.lab.deadline import within
from app.lab.report import Cell, Table
from app.lab.workspace import LabWorkspace
from app.operations.kafka_clients import bounded, offsets_consumer
from app.settings import Settings

__all__ = ["add_arguments", "run_from_args"]

MODES = ("fast", "exact")
POLL_S = 0.05
CLAIM = (
    "Real-time Analytics: High throughput is priority; Some message loss acceptable; "
    "Low latency required. Solution: Auto-commit offsets for simplicity"
)
COLUMNS = [
    "mode",
    "orders",
    "counted",
    "error",
    *(f"{currency} revenue error" for currency in CURRENCIES),
    "kills",
    "orders/s",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--orders", type=int, default=6000, help="orders of the faulted stream (default 6000)"
    )
    parser.add_argument(
        "--rate", type=float, default=400.0, help="orders sent per second (default 400)"
    )
    parser.add_argument(
        "--kill-every",
        type=float,
        default=3.0,
        metavar="S",
        help="kill -9 each member every S seconds (default 3)",
    )
    parser.add_argument(
        "--burst",
        type=int,
        default=50_000,
        help="orders of the throughput burst, without faults (default 50000)",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=150.0,
        help="give up (with an error) after this many seconds (default 150)",
    )


class _Run:
    """The run's state, for the deadline's message: the step in hand."""

    def __init__(self) -> None:
        self.step = "starting"


async def run_from_args(
    settings: Settings, workspace: LabWorkspace, args: argparse.Namespace
) -> list[Table]:
    run = _Run()
    engine = create_engine(settings.database)
    groups: list[str] = []
    try:
        await check_tables(engine)
        async with within(settings.kafka, lambda: f"analytics: {run.step}", float(args.deadline)):
            faulted = await _faulted(settings, workspace, engine, args, run, groups)
            rates = {
                mode: await _throughput(settings, workspace, engine, mode, args, run, groups)
                for mode in MODES
            }
    finally:
        if not getattr(args, "keep", False):  # `orders lab all` runs an empty command line
            await _forget(engine, groups)
        await engine.dispose()
    source, slots, sums = faulted
    rows, notes = [], []
    for slot in slots:
        orders_counted = sum(orders for orders, _ in sums[slot.mode].values())
        error = orders_counted - source.orders
        row: dict[str, Cell] = {
            "mode": slot.mode,
            "orders": source.orders,
            "counted": orders_counted,
            "error": error,
            "kills": slot.kills,
            "orders/s": rates[slot.mode],
        }
        for currency in CURRENCIES:
            revenue = sums[slot.mode].get(currency, (0, Decimal(0)))[1]
            row[f"{currency} revenue error"] = str(revenue - source.revenue[currency])
        rows.append(row)
        notes.append(_why(slot.mode, error, slot.kills))
    truth = ", ".join(f"{currency} {source.revenue[currency]}" for currency in CURRENCIES)
    return [
        Table(
            title=f"orders lab analytics: {source.orders:,} orders ({truth}) counted under "
            f"kill -9 every {args.kill_every:g}s; throughput: {args.burst:,} orders, no faults",
            claim=CLAIM,
            columns=COLUMNS,
            rows=rows,
            notes=[*notes, *NOTES],
        )
    ]


async def _faulted(
    settings: Settings,
    workspace: LabWorkspace,
    engine: AsyncEngine,
    args: argparse.Namespace,
    run: _Run,
    groups: list[str],
) -> tuple[OrderSource, list[AnalyticsSlot], dict[str, dict[str, tuple[int, Decimal]]]]:
    """Both modes count one stream, each killed -9 every `kill_every` s (their kills apart by
    half of it); then each reads to the end, stops, and its windows are summed."""
    run.step = "creating the stream's topic"
    topic = await create_orders_topic(workspace, "analytics")
    slots = []
    for mode in MODES:
        group = workspace.group(f"analytics-{mode}")
        groups.append(group)
        slots.append(AnalyticsSlot(settings, mode, topic, group))
    try:
        run.step = "starting the members"
        for slot in slots:
            await slot.start()
        async with OrderSource(settings.kafka) as source:
            stop = asyncio.Event()
            kills = [
                asyncio.create_task(kill_every(slot, args.kill_every, i / len(slots), stop))
                for i, slot in enumerate(slots)
            ]
            try:
                run.step = "sending the stream under kill -9"
                await source.send(topic, int(args.orders), float(args.rate))
            finally:
                stop.set()
                await asyncio.gather(*kills)
        run.step = "waiting for the members to read the whole topic"
        ends = await _ends(settings, topic)
        for slot in slots:
            while not await slot.reached(engine, ends):  # the run's deadline bounds it
                slot.check()
                await asyncio.sleep(0.2)
            await slot.stop()
        run.step = "summing the windows"
        sums = {slot.mode: await counted(engine, slot.group) for slot in slots}
    finally:
        for slot in slots:
            await slot.end()
    return source, slots, sums


async def _throughput(
    settings: Settings,
    workspace: LabWorkspace,
    engine: AsyncEngine,
    mode: str,
    args: argparse.Namespace,
    run: _Run,
    groups: list[str],
) -> float | None:
    """One member of `mode` alone counts a burst already in the topic: orders per second from
    its first counted order to its last (its start and join left out)."""
    run.step = f"the {mode} mode's throughput"
    topic = await create_orders_topic(workspace, f"analytics-burst-{mode}")
    async with OrderSource(settings.kafka) as source:
        await source.send(topic, int(args.burst), None)
    group = workspace.group(f"analytics-burst-{mode}")
    groups.append(group)
    slot = AnalyticsSlot(settings, mode, topic, group)
    await slot.start()
    started = time.monotonic()
    try:
        # From the member's first counted order; if the first look already finds the whole
        # burst counted (a fast member on a loaded machine), from its start instead.
        first: tuple[float, int] | None = None
        while True:
            slot.check()
            orders = sum(n for n, _ in (await counted(engine, group)).values())
            now = time.monotonic()
            if first is None and orders > 0:
                first = (now, orders)
            if orders >= source.orders:
                break
            await asyncio.sleep(POLL_S)
        assert first is not None
        if first[1] >= orders:
            first = (started, 0)
        took = now - first[0]
        return (orders - first[1]) / took if took > 0 else None
    finally:
        await slot.end()


async def _ends(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    kafka = settings.kafka
    partitions = [TopicPartition(topic, p) for p in range(kafka.partitions)]
    async with offsets_consumer(kafka) as consumer:
        ends: dict[TopicPartition, int] = await bounded(
            kafka, "reading end offsets", consumer.end_offsets(partitions)
        )
    return ends


async def _forget(engine: AsyncEngine, groups: list[str]) -> None:
    """The run's windows, watermarks and positions, removed (its topics go with the workspace,
    and with `--keep` these stay too)."""
    with contextlib.suppress(Exception):  # cleaning up must not hide the run's result
        async with engine.begin() as connection:
            for group in groups:
                await window_store.forget_group(connection, group)
                await delete_group_positions(connection, group)


def _why(mode: str, error: int, kills: int) -> str:
    if mode == "fast":
        if error > 0:
            return (
                f"fast: {error:+,} after {kills} kills: orders upserted after the last "
                "auto-commit were counted again by the restarted member, which resumed from "
                "that commit."
            )
        if error < 0:
            return (
                f"fast: {error:+,} after {kills} kills: the auto-commit timer had committed "
                "batches that were still being counted when the member was killed; nobody "
                "counted them."
            )
        return f"fast: no error this time ({kills} kills all fell where a recount changed nothing)."
    return (
        f"exact: {error:+,} after {kills} kills: each kill left at most an uncommitted "
        "transaction (windows and positions together), redone from the stored positions."
    )


NOTES = [
    "orders/s: one member alone counting a burst already in its topic, from its first counted "
    "order to its last (process start and group join left out). A batch (up to "
    "ANALYTICS_MAX_RECORDS orders) is one upsert in both modes; the exact mode adds the "
    "positions' lock, check and move to the same transaction, a few statements per batch: "
    "compare the two rates with their spread over a few runs.",
]

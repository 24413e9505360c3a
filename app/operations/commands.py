"""Handlers of the operator subcommands: `orders lag`, `orders offsets reset|delete`,
`orders dlq`, `orders skipped`, `orders topics grow`.

Each prints what it found. What goes wrong on the way (Kafka or PostgreSQL away or refusing, a
record that cannot be replayed) is one `orders: ...` line on stderr and exit code 1, never a
traceback: `_explain` is the one place that decides which errors those are.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from aiokafka.errors import KafkaError
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.errors import OrdersError
from app.settings import Settings


def _explain(settings: Settings, exc: BaseException) -> str | None:
    """One line for an error an operator command can meet; None for anything else (a bug)."""
    if isinstance(exc, OrdersError):
        return str(exc)
    if isinstance(exc, KafkaError):
        return f"Kafka at {settings.kafka.bootstrap_servers}: {exc}"  # str() names the class
    if isinstance(exc, SQLAlchemyError | OSError):
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        url = urlsplit(str(settings.database.url))  # host and database only: no password
        where = f"{url.hostname}:{url.port or 5432}{url.path}"
        return f"PostgreSQL at {where}: {type(cause).__name__}: {cause}".strip()
    return None


def _fail(message: str) -> int:
    print(f"orders: {message}", file=sys.stderr)
    return 1


def _run(settings: Settings, work: Coroutine[Any, Any, int]) -> int:
    try:
        return asyncio.run(work)
    except Exception as exc:
        message = _explain(settings, exc)
        if message is None:
            raise
        return _fail(message)


@asynccontextmanager
async def _engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    from app.db.engine import create_engine

    engine = create_engine(settings.database)
    try:
        yield engine
    finally:
        await engine.dispose()


def _dash(value: object | None) -> str:
    return "-" if value is None else str(value)


def lag(settings: Settings, args: argparse.Namespace) -> int:
    """The lag and status of every partition (exit 3 if one is STALLED or STOPPED), or with
    --watch a live view until Ctrl-C (exit 0)."""
    import time

    from app.operations import lag_report
    from app.operations.lag import group_lag

    stall_after_s = args.stall_after or settings.worker.stall_after_s
    group, topic = settings.worker.group_id, settings.kafka.orders_topic
    if args.watch:
        return _watch_lag(settings, args.interval, stall_after_s)

    async def show() -> int:
        async with _engine(settings) as engine:
            rows = await group_lag(settings, engine)
        reports = lag_report.assess(rows, now=time.time(), stall_after_s=stall_after_s)
        if args.json:
            print(lag_report.as_json(reports, group=group, topic=topic))
        else:
            print("\n".join(lag_report.table_lines(reports, group=group, topic=topic)))
        return lag_report.exit_code(r.status for r in reports)

    return _run(settings, show())


def _watch_lag(settings: Settings, interval_s: float, stall_after_s: float) -> int:
    from app.operations.lag_watch import watch

    async def live() -> int:
        async with _engine(settings) as engine:
            await watch(
                settings,
                engine,
                interval_s=interval_s,
                stall_after_s=stall_after_s,
                explain=lambda exc: _explain(settings, exc),
            )
        return 0

    try:
        return _run(settings, live())
    except KeyboardInterrupt:  # how a watch ends: asyncio.run cancelled it, the view was closed
        return 0


def offsets_reset(settings: Settings, args: argparse.Namespace) -> int:
    from app.operations.offsets import Target, apply_reset, plan_reset

    if args.to_earliest:
        target = Target("earliest")
    elif args.to_latest:
        target = Target("latest")
    elif args.to_offset is not None:
        target = Target("offset", args.to_offset)
    else:
        target = Target("shift", args.shift_by)

    async def reset() -> int:
        async with _engine(settings) as engine:
            moves = await plan_reset(settings, engine, target, args.partition, args.group)
            for move in moves:
                print(f"partition {move.partition}: {_dash(move.current)} -> {move.new}")
            if not args.execute:
                print("plan only: add --execute to apply (with every worker stopped)")
                return 0
            await apply_reset(settings, engine, moves, args.group)
        print(f"reset applied to group {args.group or settings.worker.group_id}")
        return 0

    return _run(settings, reset())


def offsets_delete(settings: Settings, args: argparse.Namespace) -> int:
    """The course's `consumer group delete`, in both places. A group neither place knows is
    nothing to delete and exits 0: what was asked for (no such group) holds, so a script that
    makes sure a group is gone can run twice; the line printed names the group, so a mistyped
    name shows."""
    from app.operations.group_delete import delete_group, plan_delete

    group = args.group or settings.worker.group_id

    async def delete() -> int:
        async with _engine(settings) as engine:
            plan = await plan_delete(settings, engine, group)
            if not plan.known:
                print(f"group {group}: no positions in PostgreSQL, unknown to Kafka: nothing to do")
                return 0
            print(f"group {group}: positions in PostgreSQL (the truth): {len(plan.stored)}")
            for row in plan.stored:
                print(f"  {row.topic} partition {row.partition}: {row.next_offset}")
            print(f"offsets committed in Kafka (the mirror): {len(plan.committed)}")
            for tp, offset in sorted(plan.committed.items()):
                print(f"  {tp.topic} partition {tp.partition}: {offset}")
            print(f"active members: {len(plan.members)} {' '.join(plan.members)}".rstrip())
            if not args.execute:
                print("plan only: add --execute to delete (with every member stopped)")
                return 0
            deleted = await delete_group(settings, engine, group)
        kafka = "deleted in Kafka" if deleted.in_kafka else "unknown to Kafka"
        print(f"group {group}: {kafka}; {deleted.positions} position(s) deleted from PostgreSQL")
        return 0

    return _run(settings, delete())


def dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    """Both places the workers set records aside: the dead-letter topic, then PostgreSQL's
    quarantine. One unreachable does not hide the other; either failing exits 1."""

    async def show() -> int:
        failed = False
        for section in (_show_dead_letters, _show_quarantined):
            try:
                await section(settings, args)
            except Exception as exc:
                message = _explain(settings, exc)
                if message is None:
                    raise
                _fail(message)
                failed = True
        return 1 if failed else 0

    return _run(settings, show())


async def _show_dead_letters(settings: Settings, args: argparse.Namespace) -> None:
    from app import dlq_headers as dlq
    from app.operations.dlq import list_dead_letters

    topic = settings.kafka.dlq_topic
    print(f"dead letters in topic {topic}:")
    page = await list_dead_letters(settings.kafka, args.start, args.limit)
    print(
        f"  offsets {page.log_start} to {page.log_end - 1} exist"
        if page.log_end > page.log_start
        else f"  the topic is empty (log start = log end = {page.log_end})"
    )
    if page.asked >= page.log_end > page.log_start:
        print(f"  offset {page.asked} is at or after the log end: nothing to list")
    if page.moved_to_log_start:
        print(
            f"  offset {page.asked} is below the log start (older letters were deleted by "
            f"retention or delete_records): listing from {page.start}"
        )
    for letter in page.letters:
        h = letter.headers
        print(
            f"  {letter.offset:>8}  from {letter.origin}  {h.get(dlq.H_ERROR_CLASS)}: "
            f"{h.get(dlq.H_ERROR_MESSAGE)}  (worker {h.get(dlq.H_WORKER)}, "
            f"{h.get(dlq.H_FAILED_AT)})"
        )
    print(f"  {len(page.letters)} dead letter(s) shown from offset {page.start}")


async def _show_quarantined(settings: Settings, args: argparse.Namespace) -> None:
    from app.db.quarantine import list_quarantined

    group, topic = settings.worker.group_id, settings.kafka.orders_topic
    print(f"quarantined records in PostgreSQL (group {group}, topic {topic}):")
    async with _engine(settings) as engine, engine.connect() as connection:
        rows, total = await list_quarantined(
            connection, group, topic, include_replayed=args.all, limit=args.limit
        )
    for row in rows:
        record = row.record
        replayed = f", replayed {row.replayed_at.isoformat()}" if row.replayed_at else ""
        print(
            f"  {row.id:>8}  from {record.origin}  {record.error_class}: {record.error_message}"
            f"  reason: {record.reason}  (worker {record.worker}, "
            f"{row.quarantined_at.isoformat()}{replayed})"
        )
    which = "in all" if args.all else "waiting (not replayed)"
    print(f"  {len(rows)} of {total} quarantined record(s) {which} shown")


def dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    if args.quarantined is not None:
        return _run(settings, _replay_quarantined(settings, args.quarantined, args.execute))
    return _run(settings, _replay_dead_letter(settings, args.offset, args.execute))


async def _replay_dead_letter(settings: Settings, offset: int, execute: bool) -> int:
    from app.operations.dlq import find_dead_letter, replay_dead_letter

    orders = settings.kafka.orders_topic
    if not execute:
        letter = await find_dead_letter(settings.kafka, offset)
        print(f"would send dead letter {offset} (from {letter.origin}) back to {orders}")
        print("plan only: add --execute to send it")
        return 0
    async with _engine(settings) as engine:
        partition, new_offset = await replay_dead_letter(settings.kafka, engine, offset)
    print(f"replayed dead letter {offset} to {orders} partition {partition} offset {new_offset}")
    return 0


async def _replay_quarantined(settings: Settings, record_id: int, execute: bool) -> int:
    from app.db.quarantine import find_quarantined
    from app.operations.dlq import replay_quarantined, replayable

    orders = settings.kafka.orders_topic
    async with _engine(settings) as engine:
        if not execute:
            async with engine.connect() as connection:
                stored = await find_quarantined(connection, record_id)
            record = replayable(settings.kafka, record_id, stored)
            print(f"would send quarantined record {record_id} (from {record.origin}) to {orders}")
            print("plan only: add --execute to send it (and mark it replayed)")
            return 0
        partition, offset = await replay_quarantined(settings.kafka, engine, record_id)
    print(
        f"replayed quarantined record {record_id} to {orders} partition {partition} "
        f"offset {offset}; marked replayed"
    )
    return 0


def skipped(settings: Settings, args: argparse.Namespace) -> int:
    from app.db.quarantine import list_skipped, skipped_totals

    group, topic = settings.worker.group_id, settings.kafka.orders_topic

    async def show() -> int:
        async with _engine(settings) as engine, engine.connect() as connection:
            totals = await skipped_totals(connection, group, topic, args.partition)
            ranges = await list_skipped(connection, group, topic, args.partition, args.limit)
        print(f"offsets group {group} passed on {topic} without a record to process")
        print(f"{'PARTITION':>9} {'RANGES':>8} {'OFFSETS':>10}  REASON")
        for total in totals:
            print(f"{total.partition:>9} {total.ranges:>8} {total.offsets:>10}  {total.reason}")
        print(
            f"{'total':>9} {sum(t.ranges for t in totals):>8} {sum(t.offsets for t in totals):>10}"
        )
        if not ranges:
            return 0
        print()
        print(f"{'PARTITION':>9} {'FIRST':>10} {'LAST':>10} {'COUNT':>8}  REASON  (WORKER, SEEN)")
        for r in ranges:
            print(
                f"{r.partition:>9} {r.from_offset:>10} {r.to_offset - 1:>10} {r.count:>8}  "
                f"{r.reason}  ({r.worker}, {r.detected_at.isoformat()})"
            )
        shown = sum(t.ranges for t in totals)
        if len(ranges) < shown:
            print(f"{len(ranges)} of {shown} ranges shown: raise --limit for more")
        return 0

    return _run(settings, show())


def _print_now(line: str) -> None:
    print(line, flush=True)  # a step as it ends, also when stdout is a pipe


def topics_grow(settings: Settings, args: argparse.Namespace) -> int:
    """The plan (exit 0), or with --execute the growth (0 grown; 1 not: the message says how
    intake was left). Exit 2 when the count asked for makes no sense."""
    from app.operations.growth_plan import GrowthRefusedError, plan_growth
    from app.operations.topic_growth import execute_growth

    async def grow() -> int:
        async with _engine(settings) as engine:
            try:
                plan = await plan_growth(settings, engine, args.partitions)
            except GrowthRefusedError as exc:
                print(f"orders: {exc}", file=sys.stderr)
                return 2
            for line in plan.lines(settings.api.intake_poll_s, args.timeout):
                print(line)
            if not args.execute:
                print("plan only: add --execute to grow (POST /orders answers 503 meanwhile)")
                return 0
            result = await execute_growth(
                settings, engine, plan, timeout_s=args.timeout, say=_print_now
            )
        print(
            f"grown: {plan.topic} has {result.partitions} partitions; intake paused for "
            f"{result.pause_s:.2f} s"
        )
        return 0

    return _run(settings, grow())

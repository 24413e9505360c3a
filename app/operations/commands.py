"""Handlers of the operator subcommands: `orders lag`, `orders offsets reset`, `orders dlq`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from app.settings import Settings


def lag(settings: Settings, args: argparse.Namespace) -> int:
    from app.db.engine import create_engine
    from app.operations.lag import group_lag

    async def show() -> None:
        engine = create_engine(settings.database)
        try:
            rows = await group_lag(settings, engine)
        finally:
            await engine.dispose()
        print(f"group {settings.worker.group_id} on {settings.kafka.orders_topic}")
        print(f"{'PARTITION':>9} {'STORED':>10} {'COMMITTED':>10} {'LOG-END':>10} {'LAG':>8}")
        for row in rows:
            print(
                f"{row.partition:>9} {_dash(row.stored):>10} {_dash(row.committed):>10} "
                f"{row.log_end:>10} {row.lag:>8}"
            )
        print(f"{'total':>9} {'':>10} {'':>10} {'':>10} {sum(r.lag for r in rows):>8}")

    asyncio.run(show())
    return 0


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def offsets_reset(settings: Settings, args: argparse.Namespace) -> int:
    from app.db.engine import create_engine
    from app.operations.offsets import ResetRefusedError, Target, apply_reset, plan_reset

    if args.to_earliest:
        target = Target("earliest")
    elif args.to_latest:
        target = Target("latest")
    elif args.to_offset is not None:
        target = Target("offset", args.to_offset)
    else:
        target = Target("shift", args.shift_by)

    async def reset() -> int:
        engine = create_engine(settings.database)
        try:
            moves = await plan_reset(settings, engine, target, args.partition)
            for move in moves:
                print(f"partition {move.partition}: {_dash(move.current)} -> {move.new}")
            if not args.execute:
                print("plan only: add --execute to apply (with every worker stopped)")
                return 0
            await apply_reset(settings, engine, moves)
        except ResetRefusedError as exc:
            print(f"orders: {exc}", file=sys.stderr)
            return 1
        finally:
            await engine.dispose()
        print(f"reset applied to group {settings.worker.group_id}")
        return 0

    return asyncio.run(reset())


def dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    from app import dlq_headers as dlq
    from app.operations.dlq import list_dead_letters

    letters = asyncio.run(list_dead_letters(settings.kafka, args.start, args.limit))
    for letter in letters:
        h = letter.headers
        print(
            f"{letter.offset:>8}  from {letter.origin}  {h.get(dlq.H_ERROR_CLASS)}: "
            f"{h.get(dlq.H_ERROR_MESSAGE)}  "
            f"(worker {h.get(dlq.H_WORKER)}, {h.get(dlq.H_FAILED_AT)})"
        )
    print(f"{len(letters)} dead letter(s) shown from offset {args.start}")
    return 0


def dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    from app.operations.dlq import replay_dead_letter

    if not args.execute:
        print(
            f"would send dead letter {args.offset} back to {settings.kafka.orders_topic}; "
            "add --execute"
        )
        return 0
    try:
        partition, offset = asyncio.run(replay_dead_letter(settings.kafka, args.offset))
    except LookupError as exc:
        print(f"orders: {exc}", file=sys.stderr)
        return 1
    print(f"replayed to {settings.kafka.orders_topic} partition {partition} offset {offset}")
    return 0

"""`orders lab semantics`: the course's delivery guarantees, measured under real faults.

The course (kafka-data-flow-course.md, "Message Delivery Guarantees"):

    - **At most once**: Messages may be lost but never duplicated
    - **At least once**: Messages are never lost but may be duplicated
    - **Exactly once**: Messages are delivered exactly once (requires idempotent producer +
      transactions)

How the lab checks it: the same stream of events (keyed by customer, numbered per customer)
goes through four delivery modes, one module each: `at_most_once`, `at_least_once`,
`exactly_once_postgres` (this project's way) and `exactly_once_kafka` (a transactional
read-process-write stage). Their consumers run as processes of their own (`member.py`), so the
faults are real: kill -9 of a consumer halfway through a batch, every few seconds; a produce
answer lost on its way back, so the client resends the request (`lost_acks.py`); a restart of
the lab's own broker mid-run (`lab_broker.py`); and, on the modes with a fence, a zombie: a
member frozen mid-batch while a newer one takes its place, then woken. A tally (`tally.py`)
then counts, from what was acknowledged and what each mode's reader received, the events lost,
doubled and reordered. Each mode also runs alone without faults, for its cost.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.errors import KafkaError

from app.db.engine import create_engine
from app.lab.deadline import within
from app.lab.report import Table
from app.lab.semantics import store
from app.lab.semantics.experiment import (
    RESTART_AT,
    BrokerRestart,
    Options,
    SemanticsOutcome,
    clean_run,
    faulted_run,
)
from app.lab.semantics.lab_broker import DEFAULT_PORT, LabBroker
from app.lab.semantics.mode_run import Lab
from app.lab.semantics.modes import MODES
from app.lab.semantics.results import semantics_table
from app.lab.workspace import LabWorkspace
from app.settings import Settings

__all__ = ["Options", "SemanticsOutcome", "add_arguments", "run_from_args", "run_semantics"]

DEFAULTS = Options()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events", type=int, default=DEFAULTS.events, help="events in the faulted run"
    )
    parser.add_argument("--keys", type=int, default=DEFAULTS.keys, help="customers (keys)")
    parser.add_argument(
        "--rate", type=float, default=DEFAULTS.rate, help="events sent per second, faulted run"
    )
    parser.add_argument(
        "--kill-every",
        type=float,
        default=DEFAULTS.kill_every_s,
        metavar="S",
        help="kill -9 each consumer every S seconds, halfway through a batch (0: never)",
    )
    parser.add_argument(
        "--lost-acks-every",
        type=int,
        default=DEFAULTS.lost_acks_every,
        metavar="N",
        help="lose the answer of every N-th produce request (the client resends it)",
    )
    parser.add_argument(
        "--broker-restart",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.broker_restart,
        help="run on a broker of the lab's own (.state/lab/kafka) and restart it mid-run "
        "(default: on; the shared broker is never restarted)",
    )
    parser.add_argument(
        "--lab-broker-port",
        type=int,
        default=DEFAULT_PORT,
        help=f"the lab's own broker's port (default {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--max-records", type=int, default=DEFAULTS.max_records, help="a consumer's batch size"
    )
    parser.add_argument(
        "--burst", type=int, default=DEFAULTS.burst, help="events of the throughput burst"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=DEFAULTS.deadline_s,
        help="give up (with an error) after this many seconds",
    )


async def run_from_args(
    settings: Settings, workspace: LabWorkspace, args: argparse.Namespace
) -> list[Table]:
    options = Options(
        events=args.events,
        keys=args.keys,
        rate=args.rate,
        kill_every_s=args.kill_every,
        lost_acks_every=args.lost_acks_every,
        broker_restart=args.broker_restart,
        broker_port=args.lab_broker_port,
        max_records=args.max_records,
        burst=args.burst,
        deadline_s=args.deadline,
        keep=getattr(args, "keep", False),  # `orders lab all` runs an empty command line
    )
    return [semantics_table(options, await run_semantics(settings, workspace, options))]


async def run_semantics(
    settings: Settings, workspace: LabWorkspace, options: Options
) -> SemanticsOutcome:
    """Run the experiment; its rows and the lab broker's topics are removed after (unless
    `options.keep`), the lab broker stopped."""
    broker = LabBroker(options.broker_home, options.broker_port) if options.broker_restart else None
    lab_settings = broker.settings(settings) if broker else settings
    engine = create_engine(settings.database)
    lab = Lab(
        lab_settings,
        LabWorkspace(lab_settings, workspace.run_id) if broker else workspace,
        engine,
        options.partitions,
        options.max_records,
    )
    # A broker restart makes aiokafka log every retry of every client: the table says what
    # happened, with the numbers.
    quiet = _Quiet()
    try:
        async with within(
            lab_settings.kafka, lambda: f"semantics, while {lab.step}", options.deadline_s
        ):
            lab.step = "checking the lab's tables"
            await store.check_tables(engine)
            if broker:
                lab.step = f"starting the lab's own broker at {broker.bootstrap}"
                await broker.open()
            restart = BrokerRestart(broker.restart) if broker else None
            faulted = await faulted_run(lab, options, restart)
            costs = {name: await clean_run(lab, options, MODES[name]) for name in options.modes}
    finally:
        await _clean_up(lab, broker, options.keep)
        quiet.restore()
    if broker and restart:
        where = (
            f"a restart of the lab's own single-node broker at {broker.bootstrap} "
            f"({broker.home}), {RESTART_AT * options.events / options.rate:g}s into the "
            f"stream, {restart.down_s:.1f}s down (the shared broker is never restarted)"
        )
    else:
        where = (
            f"no broker restart (--no-broker-restart; broker {settings.kafka.bootstrap_servers})"
        )
    return SemanticsOutcome(
        faulted, costs, where, restart is not None and restart.done, lab.run_ids
    )


async def _clean_up(lab: Lab, broker: LabBroker | None, keep: bool) -> None:
    """Remove the run's rows (and the lab broker's topics) unless `keep`; stop the lab broker.
    A step that fails is said on stderr, and does not hide the run's own result."""
    steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
    if not keep:
        steps.append(
            ("removing the run's rows", lambda: store.remove_runs(lab.engine, lab.run_ids))
        )
    steps.append(("closing the database engine", lab.engine.dispose))
    if broker:
        if not keep:
            steps.append(("removing the lab broker's topics", lab.workspace.remove))
        steps.append((f"stopping the lab's broker at {broker.bootstrap}", broker.close))
    for what, step in steps:
        try:
            await step()
        except Exception as exc:  # the next steps must still run
            print(f"orders: lab: semantics: {what} failed: {exc!r}", file=sys.stderr)


class _Quiet:
    """aiokafka's retries kept off stderr until restore(): its loggers (but for critical lines),
    and the futures a dead producer leaves unread (source.py replaces such a producer; its
    sends were counted), which asyncio would report when they are collected."""

    def __init__(self) -> None:
        self._logger = logging.getLogger("aiokafka")
        self._level = self._logger.level
        self._logger.setLevel(logging.CRITICAL)
        self._loop = asyncio.get_running_loop()
        self._handler = self._loop.get_exception_handler()
        self._loop.set_exception_handler(self._unread_kafka_errors_dropped)

    def _unread_kafka_errors_dropped(
        self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]
    ) -> None:
        unread = str(context.get("message", "")).startswith("Future exception was never retrieved")
        if unread and isinstance(context.get("exception"), KafkaError):
            return
        if self._handler is not None:
            self._handler(loop, context)
        else:
            loop.default_exception_handler(context)

    def restore(self) -> None:
        self._logger.setLevel(self._level)
        self._loop.set_exception_handler(self._handler)

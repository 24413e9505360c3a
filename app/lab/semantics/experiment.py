"""The experiment's two phases: every mode under the same faults at once, then each alone
without faults for its cost."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from app.lab.semantics.downstream import census
from app.lab.semantics.lab_broker import DEFAULT_PORT
from app.lab.semantics.members import Zombie
from app.lab.semantics.mode_run import Lab, ModeRun
from app.lab.semantics.modes import MODES, Mode
from app.lab.semantics.source import Source
from app.lab.semantics.stream import make_stream
from app.lab.semantics.tally import Received, Tally, percentile, tally

FLUSH_S = 60.0
RESTART_AT = 0.5  # the broker restart's place in the stream's sending time


@dataclass(frozen=True)
class Options:
    """The experiment's sizes; the defaults are what `make lab` runs."""

    events: int = 6000
    keys: int = 50
    rate: float = 500.0
    kill_every_s: float = 2.5
    lost_acks_every: int = 25
    broker_restart: bool = True
    zombie: bool = True
    max_records: int = 200
    latency_events: int = 400
    latency_rate: float = 200.0
    burst: int = 3000
    partitions: int = 6
    deadline_s: float = 300.0
    keep: bool = False
    broker_home: Path | None = None
    broker_port: int = DEFAULT_PORT
    modes: tuple[str, ...] = tuple(MODES)


@dataclass(frozen=True)
class Faulted:
    """One mode's faulted run: its tally and what was done to it."""

    tally: Tally
    kills: int
    crashes: int
    lost_acks: int
    failed_sends: int  # sends the client reported failed
    producer_deaths: list[str]  # why each source producer that died (and was replaced) died
    zombie: Zombie | None
    zombie_writes_visible: int  # rows or records of the zombie's frozen batch that are visible
    never_in_log: int  # acknowledged events the input topic does not hold
    doubled_in_log: int  # copies in the input topic beyond the first


@dataclass(frozen=True)
class Cost:
    """One mode alone, without faults."""

    orders_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    tally: Tally


@dataclass(frozen=True)
class SemanticsOutcome:
    faulted: dict[str, Faulted]
    costs: dict[str, Cost]
    broker: str  # the broker fault, in words
    broker_restarted: bool
    run_ids: list[str]  # the runs' ids in lab_deliveries and lab_positions


async def faulted_run(
    lab: Lab, options: Options, broker_restart: BrokerRestart | None
) -> dict[str, Faulted]:
    """Every mode at once, on the same stream, under the same faults: kill -9 of its member
    every few seconds (at a batch's halfway point), every N-th produce answer lost, a broker
    restart mid-run; a zombie tried on the modes with a fence."""
    stream = make_stream(options.events, options.keys)
    modes = [MODES[name] for name in options.modes]
    async with AsyncExitStack() as stack:
        runs = [ModeRun(lab, mode, "faults") for mode in modes]
        lab.step = "creating the faulted run's topics"
        for run in runs:
            await run.prepare(stack)
        lab.step = "starting the members"
        await asyncio.gather(*(run.slot.start() for run in runs))
        kafka = lab.settings.kafka
        sources = [
            await stack.enter_async_context(
                Source(kafka, run.mode.source_producer, options.lost_acks_every)
            )
            for run in runs
        ]
        stops = [asyncio.Event() for _ in runs]
        kills = [
            asyncio.create_task(_kill_every(run, options, stop, broker_restart))
            for run, stop in zip(runs, stops, strict=True)
        ]
        restart = (
            asyncio.create_task(broker_restart.after(RESTART_AT * options.events / options.rate))
            if broker_restart
            else None
        )
        try:
            lab.step = "sending the stream under faults"
            await asyncio.gather(
                *(
                    source.send(run.topic, stream, options.rate)
                    for run, source in zip(runs, sources, strict=True)
                )
            )
            await asyncio.gather(*(source.flush(FLUSH_S) for source in sources))
            if restart:
                await restart
            lab.step = "waiting for the members to catch up, under kill -9"
            received = await asyncio.gather(
                *(
                    run.finish(task, stop)
                    for run, task, stop in zip(runs, kills, stops, strict=True)
                )
            )
        finally:
            for stop in stops:
                stop.set()
            tasks = [task for task in (*kills, restart) if task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        lab.step = "counting the input topics"
        logs = await asyncio.gather(*(census(kafka, run.topic, lab.partitions) for run in runs))
    outcome = {}
    for run, source, task, copies, log in zip(runs, sources, kills, received, logs, strict=True):
        zombie = task.result()
        outcome[run.mode.name] = Faulted(
            tally=tally(source.sent, source.acknowledged, copies),
            kills=run.slot.kills,
            crashes=run.slot.crashes,
            lost_acks=source.lost_acks,
            failed_sends=source.failed,
            producer_deaths=source.deaths,
            zombie=zombie,
            zombie_writes_visible=_written_by(copies, zombie),
            never_in_log=sum(1 for event_id in source.acknowledged if event_id not in log),
            doubled_in_log=sum(count - 1 for count in log.values()),
        )
    return outcome


async def clean_run(lab: Lab, options: Options, mode: Mode) -> Cost:
    """One mode alone, without faults: a paced stream for its latency (below every mode's
    capacity, so the latency is the mode's own, not a queue's), then a burst for its
    throughput (first send to last stored or visible)."""
    stream = make_stream(options.latency_events + options.burst, options.keys)
    paced, burst = stream[: options.latency_events], stream[options.latency_events :]
    async with AsyncExitStack() as stack:
        run = ModeRun(lab, mode, "clean")
        lab.step = f"{mode.name} without faults"
        await run.prepare(stack)
        await run.slot.start()
        async with Source(lab.settings.kafka, mode.source_producer) as source:
            await source.send(run.topic, paced, options.latency_rate)
            await source.flush(FLUSH_S)
            burst_began = time.time()
            await source.send(run.topic, burst, None)
            await source.flush(FLUSH_S)
        received = await run.finish()
    first = _first_copies(received)
    latencies = [(c.stored_at - c.sent_at) * 1000 for c in first if c.event_id <= len(paced)]
    burst_stored = [c.stored_at for c in first if c.event_id > len(paced)]
    took = max(burst_stored) - burst_began if burst_stored else 0.0
    return Cost(
        orders_per_s=len(burst) / took if took > 0 else None,
        p50_ms=percentile(latencies, 0.5),
        p99_ms=percentile(latencies, 0.99),
        tally=tally(source.sent, source.acknowledged, received),
    )


class BrokerRestart:
    """The broker-restart fault, on the lab's own broker."""

    def __init__(self, restart: Callable[[], Awaitable[None]]) -> None:
        self._restart = restart
        self.done = False
        self.down_s = 0.0
        self.finished = asyncio.Event()  # set when it is done, or failed

    async def after(self, delay_s: float) -> None:
        try:
            await asyncio.sleep(delay_s)
            began = time.monotonic()
            await self._restart()
            self.down_s = time.monotonic() - began
            self.done = True
        finally:
            self.finished.set()


async def _kill_every(
    run: ModeRun, options: Options, stop: asyncio.Event, broker_restart: BrokerRestart | None
) -> Zombie | None:
    """Until `stop`: every `kill_every_s` seconds, kill -9 the member halfway through a batch
    and start the next one; the second time, on a mode with a fence, make it a zombie instead
    (after a kill, so that a short run has both). A member that died on its own is started
    again meanwhile.

    The zombie waits for the broker restart to be over: frozen during it, its successor could
    not commit until the broker is back, so it would stay frozen (its PostgreSQL transaction
    open) for the whole restart and more, and the test would be of the restart, not the fence."""
    zombie: Zombie | None = None
    if options.kill_every_s <= 0:
        return None
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + options.kill_every_s
        while not stop.is_set() and loop.time() < due:
            await run.slot.keep_running()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        if stop.is_set():
            break
        if run.mode.zombie and options.zombie and zombie is None and run.slot.kills:
            if broker_restart is not None:
                await broker_restart.finished.wait()
            zombie = await run.slot.zombie(stop)
        else:
            await run.slot.kill_mid_batch(stop)
    return zombie


def _written_by(received: list[Received], zombie: Zombie | None) -> int:
    """Copies the zombie wrote in its frozen batch, or after it, that a reader can see."""
    if zombie is None:
        return 0
    count = 0
    for copy in received:
        instance, _, batch = copy.writer.partition(":")
        if instance == zombie.instance and int(batch or 0) >= zombie.batch:
            count += 1
    return count


def _first_copies(received: list[Received]) -> list[Received]:
    seen: Counter[int] = Counter()
    first = []
    for copy in received:
        seen[copy.event_id] += 1
        if seen[copy.event_id] == 1:
            first.append(copy)
    return first

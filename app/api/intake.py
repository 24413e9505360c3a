"""The intake gate: whether this API process takes orders (POST /orders) now.

Why: the API picks each order's partition itself, murmur2 over the partition count its producer
knows (app/batching.py). `orders topics grow` adds partitions (app/operations/topic_growth.py);
an order produced with the new count may land on another partition than its customer's earlier
orders no worker has stored yet, and two workers would store that customer's orders
concurrently, out of order. So the grow pauses intake, waits until every API process says that
every order it let in is answered, drains the workers, adds the partitions and resumes; each
process reopens only once its producer's metadata shows the new count.

How: a task reads the topic's row of intake_state every API_INTAKE_POLL_S, FOR SHARE and with
this process's heartbeat in the same statement (app/db/intake.py says why). The request path
does no I/O: `with gate:` reads a few attributes and counts the orders in flight. Refused with
503 and Retry-After while:
- paused: intake_paused (also while reopening, until the producer sees the new count);
- the state has not been read for API_INTAKE_STALE_S, or not yet: intake_unknown. A process that
  cannot read it could miss a pause; a shorter PostgreSQL outage does not stop intake (POST
  /orders without an Idempotency-Key still never waits for PostgreSQL);
- the producer's count differs from the registered one: partition_count_changed, logged as an
  error (a `kafka-topics --alter` behind the API's back: the remap the grow exists to avoid;
  `orders topics grow --partitions <the topic's count> --execute` drains and registers it).
  The publisher holds every order to the registered count too (OrderPublisher.
  expect_partitions), so nothing is produced with another count between two reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import intake
from app.db.intake import IntakeState, MemberReport, MemberState
from app.errors import IntakeClosedError, IntakeClosedReason
from app.publisher import OrderPublisher
from app.settings import Settings

log = logging.getLogger(__name__)

# A producer whose count differs asks the broker again at most this often (each ask is a
# metadata request; behind an unannounced change the difference lasts until someone acts).
REFRESH_EVERY_S = 1.0
# Heartbeats a day old are deleted this often, by each process.
PURGE_EVERY_S = 60.0


@dataclass(frozen=True)
class Verdict:
    open: bool
    reason: IntakeClosedReason | None = None


OPEN = Verdict(True)


def judge(state: IntakeState | None, producer_partitions: int | None, reopening: bool) -> Verdict:
    """Whether to take orders, from the state read, the producer's partition count (None: not
    known yet; the publisher checks each order once it is) and whether a pause or a new count
    was seen since intake was last open."""
    if state is None:  # a topic `orders migrate` never registered: no count to hold it to
        return OPEN
    if state.paused:
        return Verdict(False, "intake_paused")
    if producer_partitions is None or producer_partitions == state.partitions:
        return OPEN
    return Verdict(False, "intake_paused" if reopening else "partition_count_changed")


def member_state(open_: bool, in_flight: int) -> MemberState:
    if open_:
        return "open"
    return "closing" if in_flight else "closed"


def member_id() -> str:
    """Unique per process and start: host, pid, and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class IntakeGate:
    """`with gate:` around the handling of one order; see the module docstring."""

    def __init__(
        self,
        engine: AsyncEngine,
        publisher: OrderPublisher,
        topic: str,
        *,
        poll_s: float,
        stale_s: float,
        read_timeout_s: float,
        answer_bound_s: float,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.member = member_id()
        self._engine = engine
        self._publisher = publisher
        self._topic = topic
        self._poll_s = poll_s
        self._stale_s = stale_s
        self._read_timeout_s = read_timeout_s
        # How long an order let in may take to be answered: a key's claim, then the ack
        # deadline and its grace (also how long an abandoned order's record may still land).
        self._answer_bound_s = answer_bound_s
        self._on_change = on_change
        self._clock = clock
        self._verdict = Verdict(False, "intake_unknown")  # closed until the first read
        self._read_at = -math.inf  # when the last successful read began
        self._in_flight = 0
        self._state: IntakeState | None = None
        self._reopening = False
        self._reported: MemberReport | None = None
        self._shown: bool | None = None
        self._refreshed_at = -math.inf
        self._purged_at = -math.inf
        self._failing = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        engine: AsyncEngine,
        publisher: OrderPublisher,
        on_change: Callable[[bool], None] | None = None,
    ) -> IntakeGate:
        api = settings.api
        timeout_s = settings.database.connect_timeout_s  # also what a key's claim may take
        return cls(
            engine,
            publisher,
            settings.kafka.orders_topic,
            poll_s=api.intake_poll_s,
            stale_s=api.intake_stale_s,
            read_timeout_s=timeout_s,
            answer_bound_s=timeout_s + api.ack_deadline_s + api.ack_grace_s,
            on_change=on_change,
        )

    # --- the request path: attribute reads, no I/O ------------------------------------------

    def __enter__(self) -> None:
        verdict = self._verdict
        if not verdict.open or self._clock() - self._read_at > self._stale_s:
            raise self._refusal(verdict)
        self._in_flight += 1

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is not None and issubclass(kind, asyncio.CancelledError):
            # Abandoned, not answered: its record may still be appended until its deadline,
            # so it stays counted until then.
            asyncio.get_running_loop().call_later(self._answer_bound_s, self._release)
        else:
            self._release()

    def _release(self) -> None:
        self._in_flight -= 1
        if not self._in_flight and not self._verdict.open:
            self._wake.set()  # tell a waiting grow at once that everything is answered

    def _refusal(self, verdict: Verdict) -> IntakeClosedError:
        if verdict.reason == "intake_paused":
            why = self._state.reason if self._state is not None else None
            return IntakeClosedError(
                f"intake is paused ({why or 'the orders topic is being grown'})", "intake_paused"
            )
        if verdict.reason == "partition_count_changed":
            msg = "the orders topic's partition count is not the one intake was told"
            return IntakeClosedError(msg, "partition_count_changed")
        if math.isinf(self._read_at):
            msg = "this API process has not read the intake state from PostgreSQL yet"
        else:
            msg = f"the intake state could not be read from PostgreSQL for {self._stale_s:g}s"
        return IntakeClosedError(msg, "intake_unknown")

    @property
    def open(self) -> bool:
        return self._verdict.open and self._clock() - self._read_at <= self._stale_s

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # --- the poller ----------------------------------------------------------------------------

    async def start(self) -> None:
        """One read now (bounded): a process that can read the state is open before it
        serves. Then one every API_INTAKE_POLL_S, in the background."""
        await self._poll()
        self._task = asyncio.create_task(self._run(), name="intake-gate")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._in_flight:
            return  # its heartbeat stays: a grow waits for its bound instead
        with contextlib.suppress(Exception):  # best effort: the row ages out otherwise
            async with asyncio.timeout(self._read_timeout_s), self._engine.begin() as connection:
                await intake.forget_member(connection, self.member)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._poll()
            except Exception:  # a bug must not end the poller (stale, it would close for good)
                log.exception("intake gate: poll failed")

    def report(self) -> MemberReport:
        """What this process says of itself at its next heartbeat."""
        generation = self._state.generation if self._state is not None else 0
        return MemberReport(
            generation,
            member_state(self._verdict.open, self._in_flight),
            self._stale_s + self._answer_bound_s,
        )

    async def _poll(self) -> None:
        started = self._clock()
        said = self.report()
        try:
            async with asyncio.timeout(self._read_timeout_s), self._engine.begin() as connection:
                state = await intake.read_and_report(connection, self._topic, self.member, said)
        except Exception as exc:  # PostgreSQL away, slow or refusing: closed once stale
            self._read_failed(exc)
        else:
            if self._failing:
                self._failing = False
                log.info("intake state read again")
            self._reported = said
            await self.apply(state, started)
            await self._tell_change()
            await self._purge_now_and_then()
        self._show()

    def _read_failed(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            log.warning(
                "could not read the intake state of %s (%r); orders are refused once it is "
                "unread for %gs (is the schema migrated? `orders migrate`)",
                self._topic,
                exc,
                self._stale_s,
            )

    async def apply(self, state: IntakeState | None, read_started_at: float) -> None:
        """What a successful read of `state` means, the read begun at `read_started_at` (this
        gate's clock): from the read's start, never later than the heartbeat PostgreSQL
        stamped, so a grow's bound (seen_at + closes_within_s) holds on this clock too."""
        self._read_at = read_started_at
        previous, self._state = self._state, state
        expected = state.partitions if state is not None else None
        if state is not None and (
            state.paused
            or (previous is not None and previous.generation != state.generation)
            or (previous is not None and previous.partitions != state.partitions)
        ):
            self._reopening = True
        self._publisher.expect_partitions(expected)
        count = await self._publisher.partition_count()  # its metadata as it is: no I/O
        self._settle(judge(state, count, self._reopening), state, count)
        open_state = state is not None and not state.paused
        if (
            open_state
            and count not in (None, expected)
            and self._clock() - self._refreshed_at >= REFRESH_EVERY_S
        ):
            # Resuming after a grow, the producer still knows the old count: ask the broker
            # (closed meanwhile, as settled just above).
            self._refreshed_at = self._clock()
            count = await self._publisher.partition_count(refresh=True)
            self._settle(judge(state, count, self._reopening), state, count)

    def _settle(self, verdict: Verdict, state: IntakeState | None, count: int | None) -> None:
        if verdict.open:
            self._reopening = False
        if verdict != self._verdict:
            self._log_change(verdict, state, count)
        self._verdict = verdict

    def _log_change(self, verdict: Verdict, state: IntakeState | None, count: int | None) -> None:
        generation = state.generation if state is not None else 0
        if verdict.open:
            partitions = f"{state.partitions} partitions" if state is not None else "unregistered"
            log.info("intake open (generation %d, %s)", generation, partitions)
        elif verdict.reason == "intake_paused":
            why = state.reason if state is not None and state.paused else "reopening"
            log.info("intake paused (generation %d): %s", generation, why)
        elif verdict.reason == "partition_count_changed" and state is not None:
            log.error(
                "topic %s has %s partitions for this producer but intake_state registers %d: "
                "every order is refused. Someone changed the partition count without `orders "
                "topics grow` (kafka-topics --alter?), which moves customers to other "
                "partitions. `orders topics grow --partitions %s --execute` drains the workers "
                "and registers it (README, 'Growing the orders topic')",
                self._topic,
                count,
                state.partitions,
                count,
            )

    async def _tell_change(self) -> None:
        """A read that closed this process with nothing in flight: say so now, not in a poll."""
        said = self.report()
        if said == self._reported:
            return
        try:
            async with asyncio.timeout(self._read_timeout_s), self._engine.begin() as connection:
                await intake.report(connection, self._topic, self.member, said)
        except Exception:  # the next poll tells it
            return
        self._reported = said

    async def _purge_now_and_then(self) -> None:
        if self._clock() - self._purged_at < PURGE_EVERY_S:
            return
        self._purged_at = self._clock()
        with contextlib.suppress(Exception):  # only housekeeping
            async with asyncio.timeout(self._read_timeout_s), self._engine.begin() as connection:
                await intake.forget_old_members(connection)

    def _show(self) -> None:
        shown = self.open
        if shown != self._shown:
            self._shown = shown
            if self._on_change is not None:
                self._on_change(shown)


def intake_of(request: Request) -> IntakeGate:
    """The app's gate, without a dependency: POST /orders is the hot path."""
    gate: IntakeGate = request.app.state.intake
    return gate

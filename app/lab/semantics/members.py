"""The lab's side of the member processes: start one, hear what it says, kill -9 it at its crash
point, freeze it into a zombie, stop it.

A `Slot` is one mode's place for a consumer: one member process at a time (plus, for a moment,
a frozen zombie), started again at once when the lab kills it, and again when it dies on its own
(a crash, counted), at the lab's next look.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.errors import OrdersError
from app.lab.semantics.member_runtime import FENCED_EXIT

STARTUP_S = 90.0  # a member waits up to 60 s for a restarting broker, then says why it gave up
STOP_S = 20.0
ZOMBIE_WAIT_S = 20.0
# The longest a zombie stays frozen: its successor's start, then its wait for a commit.
LONGEST_FREEZE_S = STARTUP_S + ZOMBIE_WAIT_S
MAX_CRASHES = 5

Line = dict[str, Any]


class MemberGone(OrdersError):
    """The member process ended while the lab waited for it to say something."""


class MemberProcess:
    """One incarnation of a slot's member, and every line it said."""

    def __init__(self, process: asyncio.subprocess.Process, instance: str) -> None:
        self.process = process
        self.instance = instance
        self.lines: list[Line] = []
        self.stderr: deque[str] = deque(maxlen=20)
        self.expected_exit = False  # the lab ended it (kill, stop): not a crash
        self._said = asyncio.Condition()
        self._done = False
        self._readers = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]

    @classmethod
    async def spawn(cls, argv: list[str], env: dict[str, str], instance: str) -> MemberProcess:
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process, instance)

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                self.stderr.append(raw.decode(errors="replace").rstrip())
                continue
            async with self._said:
                self.lines.append(line)
                self._said.notify_all()
        async with self._said:
            self._done = True
            self._said.notify_all()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.stderr.append(raw.decode(errors="replace").rstrip())

    @property
    def exited(self) -> bool:
        return self.process.returncode is not None

    async def said(
        self, event: str, since: int = 0, where: Callable[[Line], bool] = lambda _: True
    ) -> Line:
        """The first `event` line the member said from line `since` on (waiting for it);
        MemberGone if the process ends before saying it."""
        async with self._said:
            while True:
                for line in self.lines[since:]:
                    if line.get("event") == event and where(line):
                        return line
                since = len(self.lines)
                if self._done:
                    msg = f"member {self.instance} ended: {self.describe()}"
                    raise MemberGone(msg)
                await self._said.wait()

    def signal(self, sig: signal.Signals) -> None:
        if not self.exited:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)

    async def kill(self) -> int:
        """kill -9: no cleanup, no goodbye."""
        self.expected_exit = True
        self.signal(signal.SIGKILL)
        return await self.wait()

    async def stop(self) -> int:
        """SIGTERM: finish the batch in hand, then leave; kill -9 if it does not in STOP_S."""
        self.expected_exit = True
        self.signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.wait(), STOP_S)
        except TimeoutError:
            return await self.kill()

    async def wait(self) -> int:
        code = await self.process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)
        return code

    def describe(self) -> str:
        said = [line for line in self.lines if line.get("event") in {"error", "fenced"}]
        last = json.dumps(said[-1]) if said else "nothing"
        tail = " | ".join(list(self.stderr)[-8:])
        return f"exit status {self.process.returncode}, said {last}; stderr: {tail or '-'}"


@dataclass(frozen=True)
class Zombie:
    """What became of a member frozen mid-batch while a newer one took its slot."""

    instance: str
    batch: int  # the batch it was in when frozen
    exit_status: int
    said_fenced: bool
    account: str  # its last words and stderr (why, when it was not fenced)

    @property
    def fenced(self) -> bool:
        return self.exit_status == FENCED_EXIT and self.said_fenced


class Slot:
    def __init__(self, name: str, argv: Callable[[str], list[str]], env: dict[str, str]) -> None:
        self.name = name
        self._argv = argv
        self._env = env
        self.started = 0
        self.kills = 0
        self.crashes = 0
        self.everyone: list[MemberProcess] = []
        self._current: MemberProcess | None = None
        # Whoever replaces the member (a kill, a zombie, a crash seen, the stop) holds this.
        self._replacing = asyncio.Lock()

    @property
    def current(self) -> MemberProcess:
        assert self._current is not None, "start() first"
        return self._current

    async def start(self) -> MemberProcess:
        """A new incarnation (m1, m2, ...), once it says it is ready."""
        async with self._replacing:
            return await self._start()

    async def _start(self) -> MemberProcess:
        self.started += 1
        member = await MemberProcess.spawn(
            self._argv(f"m{self.started}"), self._env, f"m{self.started}"
        )
        self.everyone.append(member)
        try:
            await asyncio.wait_for(member.said("ready"), STARTUP_S)
        except TimeoutError:
            await member.kill()
            msg = f"{self.name}: member {member.instance} not ready in {STARTUP_S:g}s: "
            raise OrdersError(msg + member.describe()) from None
        except MemberGone:
            msg = f"{self.name}: member {member.instance} failed to start: {member.describe()}"
            raise OrdersError(msg) from None
        self._current = member
        return member

    async def keep_running(self) -> None:
        """Start a member again if it died on its own (a crash: counted, and bounded)."""
        async with self._replacing:
            member = self.current
            if member.exited and not member.expected_exit:
                self.crashes += 1
                if self.crashes > MAX_CRASHES:
                    msg = f"{self.name}: its member keeps dying; the last: {member.describe()}"
                    raise OrdersError(msg)
                await self._start()

    async def _at_crash_point(self, member: MemberProcess, stop: asyncio.Event) -> Line | None:
        """Arm the member's crash point and wait until it stands there; None if `stop` came
        first (then disarmed) or the member died."""
        since = len(member.lines)
        member.signal(signal.SIGUSR1)
        reached = asyncio.create_task(member.said("mid-batch", since))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({reached, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not reached.done():
            member.signal(signal.SIGUSR2)
            await asyncio.sleep(0.2)  # it may have reached the point as it was disarmed
        if not reached.done():
            reached.cancel()
            return None
        with contextlib.suppress(MemberGone):
            return reached.result()
        return None

    async def kill_mid_batch(self, stop: asyncio.Event) -> bool:
        """kill -9 the member halfway through a batch, and start the next one at once."""
        member = self.current
        if await self._at_crash_point(member, stop) is None:
            return False
        async with self._replacing:
            await member.kill()
            self.kills += 1
            await self._start()
        return True

    async def zombie(self, stop: asyncio.Event) -> Zombie | None:
        """Freeze the member mid-batch (SIGSTOP), start a newer one in its slot, let it commit
        a batch (past the frozen one's batch, for a fenced position), then wake the frozen one
        (SIGCONT): it must find itself fenced, and leave."""
        frozen = self.current
        line = await self._at_crash_point(frozen, stop)
        if line is None:
            return None
        async with self._replacing:
            frozen.signal(signal.SIGSTOP)
            frozen.expected_exit = True
            try:
                newer = await self._start()

                def past_it(committed: Line) -> bool:
                    if "partition" not in line:
                        return True
                    same = committed.get("partition") == line["partition"]
                    return same and int(committed["end"]) > int(line["start"])

                with contextlib.suppress(TimeoutError, MemberGone):
                    await asyncio.wait_for(newer.said("committed", 0, past_it), ZOMBIE_WAIT_S)
            finally:
                frozen.signal(signal.SIGCONT)
            try:
                status = await asyncio.wait_for(frozen.wait(), STOP_S)
            except TimeoutError:
                status = await frozen.kill()
        said_fenced = any(said.get("event") == "fenced" for said in frozen.lines)
        return Zombie(frozen.instance, int(line["batch"]), status, said_fenced, frozen.describe())

    async def stop(self) -> None:
        async with self._replacing:
            if self._current is not None and not self._current.exited:
                await self._current.stop()

    async def end_everyone(self) -> None:
        """Whatever still runs, ended (a frozen one woken first, so that it can die)."""
        for member in self.everyone:
            if not member.exited:
                member.signal(signal.SIGCONT)
                await member.kill()

"""A lab consumer run as a child process, so that it can die the way a crash kills: kill -9.

The child gets exactly the parent's configuration (app.process_env.settings_env) and reports what
happens to it one line at a time on stdout (`assigned partitions=0,2,4`, `mid-batch offset=41`);
the parent waits for the line it needs, bounded, and then kills, stops or keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from app.operations.kafka_clients import KafkaCommandError
from app.process_env import settings_env
from app.settings import Settings


def fields(line: str) -> dict[str, str]:
    """The `key=value` words of a child's line (`done processed=12 commits=3`)."""
    return dict(word.split("=", 1) for word in line.split() if "=" in word)


class LabChild:
    """One `python -m <module> ...` child; stderr goes to a log file quoted when it fails."""

    def __init__(self, process: asyncio.subprocess.Process, name: str, log: Path) -> None:
        self.process = process
        self.name = name
        self.log = log

    async def line(self, *starts: str, timeout: float) -> str:
        """The next line that begins with one of `starts`, within `timeout` seconds."""
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while raw := await self.process.stdout.readline():
                    text = raw.decode().strip()
                    if text.startswith(starts):
                        return text
        except TimeoutError:
            msg = f"{self.name}: no '{'|'.join(starts)}' line within {timeout:g}s{self._tail()}"
            raise KafkaCommandError(msg) from None
        msg = f"{self.name}: exited before a '{'|'.join(starts)}' line{self._tail()}"
        raise KafkaCommandError(msg)

    def kill(self) -> None:
        """SIGKILL: no close, no LeaveGroup, no last commit; the broker learns nothing."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM: the child closes its consumer the way its client library closes it."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        await self.wait(timeout)

    async def wait(self, timeout: float = 15.0) -> int:
        try:
            async with asyncio.timeout(timeout):
                return await self.process.wait()
        except TimeoutError:
            self.kill()
            return await self.process.wait()

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            tail = self.log.read_text(errors="replace").strip().splitlines()[-5:]
            if tail:
                return ": " + " | ".join(tail)
        return ""


@asynccontextmanager
async def lab_child(
    settings: Settings, module: str, args: list[str], log_dir: Path, name: str
) -> AsyncIterator[LabChild]:
    """Start `python -m module args`; it is killed on the way out if still running."""
    log = log_dir / f"{name}.log"
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            *args,
            env=settings_env(settings),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    child = LabChild(process, name, log)
    try:
        yield child
    finally:
        if process.returncode is None:
            child.kill()
            await process.wait()

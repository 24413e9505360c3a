"""The lab's own broker, for the broker-restart fault: the shared one is never restarted.

A single-node KRaft broker on ports of its own, its state under `.state/lab/kafka`, started,
stopped and started again by the same code as `make up` (scripts/services.py's kafka_up and
stop_pid, loaded by path as tests/integration/throwaway.py does). The whole experiment runs on
it, so that restarting it mid-run hits every mode at once; it is stopped at the end.

One lab run at a time owns it: a lock file in its home (flock, released by the kernel when the
process ends, however it ends) keeps a second run from sharing its folder and port. A broker
left running by a run killed -9 (its pid file names a live process) is stopped before starting:
it holds the dead run's state, and the lab starts from a broker it started itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import IO

from app.errors import OrdersError
from app.settings import KafkaSettings, Settings, state_dir

ROOT = Path(__file__).resolve().parents[3]
SERVICES = ROOT / "scripts" / "services.py"
DEFAULT_PORT = 19792  # below Linux's ephemeral range: see tests/integration/throwaway.py


def default_home() -> Path:
    return (state_dir() / "lab" / "kafka").resolve()


def _services() -> ModuleType:
    if not SERVICES.exists():
        msg = (
            f"the broker-restart fault needs a broker of the lab's own, started by "
            f"{SERVICES.relative_to(ROOT)}, which is not here (not a source checkout): "
            "run with --no-broker-restart"
        )
        raise OrdersError(msg)
    spec = importlib.util.spec_from_file_location("services", SERVICES)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["services"] = module
    spec.loader.exec_module(module)
    return module


class LabBroker:
    def __init__(self, home: Path | None = None, port: int = DEFAULT_PORT) -> None:
        self._services = _services()
        self.home = home or default_home()
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"
        self.restarts = 0
        self._lock: IO[str] | None = None

    def settings(self, settings: Settings) -> Settings:
        """`settings` pointed at this broker: one node, PLAINTEXT on loopback."""
        kafka: KafkaSettings = settings.kafka.model_copy(
            update={
                "bootstrap_servers": self.bootstrap,
                "replication_factor": 1,
                "min_insync_replicas": 1,
                "security_protocol": "PLAINTEXT",
                "sasl_username": None,
                "sasl_password": None,
                "ssl_cafile": None,
                "ssl_certfile": None,
                "ssl_keyfile": None,
            }
        )
        return settings.model_copy(update={"kafka": kafka})

    async def open(self) -> None:
        """Take the broker for this run (OrdersError if another run has it), stop a broker a
        killed run left behind, and start it."""
        self._take_lock()
        await self.stop()  # a stale one, if any: nothing when no live pid file
        await self.start()

    async def close(self) -> None:
        """Stop the broker and let the next run have it (nothing if this run never had it:
        the broker is another run's)."""
        if self._lock is None:
            return
        try:
            await self.stop()
        finally:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    def _take_lock(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        lock = (self.home / "lab.lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            other = lock.read().strip() or "another process"
            lock.close()
            msg = (
                f"the lab's own broker at {self.bootstrap} ({self.home}) is in use by another "
                f"lab run ({other}): wait for it to end, or run with --no-broker-restart"
            )
            raise OrdersError(msg) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        lock.flush()
        self._lock = lock

    async def start(self) -> None:
        await self._quietly("start", self._services.kafka_up, 1, self.port, self.home)

    async def stop(self) -> None:
        # Its one node, by its pid file: kafka_down would walk the whole folder, data included,
        # where the broker may be deleting the run's topics right then.
        pid_file = self._services.kafka_node_home(self.home, 1) / "broker.pid"
        await self._quietly("stop", self._services.stop_pid, pid_file, "the lab's Kafka broker")

    async def restart(self) -> None:
        """A clean stop (SIGTERM: the broker shuts down in order), then a start."""
        await self.stop()
        await self.start()
        self.restarts += 1

    async def _quietly(self, what: str, step: Callable[..., object], *args: object) -> None:
        def run() -> None:
            # services.py reports on stdout, which belongs to the lab's table (and its JSON).
            with contextlib.redirect_stdout(sys.stderr):
                step(*args)

        try:
            await asyncio.to_thread(run)
        except Exception as exc:
            msg = f"the lab's own broker at {self.bootstrap} ({self.home}) did not {what}: {exc}"
            raise OrdersError(msg) from exc

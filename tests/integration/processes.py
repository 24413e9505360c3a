"""Run the real `orders` commands as separate processes, configured like an operator would."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from app.process_env import settings_env
from app.settings import Settings

__all__ = ["ORDERS", "OrdersProcess", "free_port", "settings_env"]

ORDERS = str(Path(sys.executable).with_name("orders"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class OrdersProcess:
    """One `orders <command>` child process, with its output kept in a log file."""

    def __init__(self, command: str, settings: Settings, log_dir: Path, **env: str) -> None:
        self.command = command
        if command == "worker" and "WORKER_METRICS_PORT" not in env:
            # Each worker its own status port (/metrics, /readyz): several run side by side.
            env["WORKER_METRICS_PORT"] = str(free_port())
        self.metrics_port = int(env.get("WORKER_METRICS_PORT", "0"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{command}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [ORDERS, command],
            env=settings_env(settings, **env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.process.send_signal(signum)

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM, then wait: the graceful path operators use."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> int:
        self.signal(signal.SIGKILL)
        return self.wait(10)

    def wait(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is not None:
                self._log.close()
        return code

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            if text in self.output():
                return True
            time.sleep(0.1)
        return text in self.output()

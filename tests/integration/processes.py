"""Run the real `orders` commands as separate processes, configured like an operator would."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from app.process_env import settings_env
from app.settings import GatewaySettings, Settings

__all__ = ["ORDERS", "GatewayProcess", "OrdersProcess", "free_port", "settings_env"]

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


class GatewayProcess:
    """`with GatewayProcess(log_dir, latency_ms=20) as url:` an `orders gateway` on a free port,
    seeded, whose injected timeouts answer after 5 s (past any member's gateway timeout: the
    member retries with the same charge key). Raises RuntimeError, with its log, if it never
    answers."""

    def __init__(
        self,
        log_dir: Path,
        *,
        latency_ms: float = 20,
        error_rate: float = 0.0,
        timeout_rate: float = 0.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._settings = GatewaySettings(
            port=self.port, latency_ms=latency_ms, error_rate=error_rate, timeout_rate=timeout_rate
        )
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"gateway-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [ORDERS, "gateway", "--seed", "14", "--timeout-answer-s", "5"],
                env=settings_env(Settings(gateway=self._settings)),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                httpx.get(f"{self.url}/stats", timeout=1).raise_for_status()
            except httpx.TransportError:
                time.sleep(0.05)
            else:
                return self.url
        self.__exit__(None, None, None)
        msg = f"orders gateway did not answer on {self.url}:\n{self.log_path.read_text()}"
        raise RuntimeError(msg)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)

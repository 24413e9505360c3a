"""What every service needs: where state lives, ports, pid files, waiting until ready."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("ORDERS_STATE_DIR", ROOT / ".state")).resolve()

# Processes started from here, kept so that when tests import this module, a running broker's
# Popen is never garbage-collected (and can be reaped once it exits).
_children: dict[int, subprocess.Popen[bytes]] = {}


class ServiceError(Exception):
    pass


def say(message: str) -> None:
    print(f"[services] {message}", flush=True)


def adopt(process: subprocess.Popen[bytes]) -> None:
    """Keep a started process reapable (see _children)."""
    _children[process.pid] = process


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    # A process we started ourselves (tests import this module) lingers as a zombie until reaped.
    if pid in _children:
        return None if _children[pid].poll() is not None else pid
    return pid


def stop_pid(pid_file: Path, name: str, grace: float = 30.0) -> None:
    pid = pid_alive(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return
    say(f"stopping {name} (pid {pid})")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_alive(pid_file):
        time.sleep(0.2)
    if pid_alive(pid_file):
        say(f"{name} did not stop within {grace:.0f}s; killing it")
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def wait_until(
    check: Callable[[], bool], what: str, timeout: float, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    hint = f"; see {log}" if log else ""
    raise ServiceError(f"{what} did not become ready within {timeout:.0f}s{hint}")


def require_port_free(port: int, owner: str) -> None:
    if reachable("127.0.0.1", port):
        raise ServiceError(
            f"port {port} is taken by another process, so {owner} cannot start there; "
            "stop that process, or point the settings at it if it is the service you want"
        )

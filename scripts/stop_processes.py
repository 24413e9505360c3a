"""Stop child processes the way operators do: SIGTERM to all, a shared grace, then SIGKILL.

Standard library only: `scripts/run-stack.py` runs before the virtualenv exists.
"""

from __future__ import annotations

import signal
import subprocess
import time

STOP_GRACE_S = 40


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> list[int]:
    """Their exit codes; one still running after the grace is killed."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return [process.returncode for process in processes]

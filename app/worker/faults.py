"""Fault points for the reliability tests: a worker can be told to die at a named step.

`ORDERS_FAULT_POINT=after_db_commit` (or `inside_db_transaction`, `after_dead_letter`) makes the
worker SIGKILL itself the first time it reaches that step, optionally after
`ORDERS_FAULT_AFTER_BATCHES` successful passes. Unset, `hit()` is a dictionary lookup and nothing
else: production code paths are the same code paths the tests kill.
"""

from __future__ import annotations

import os
import signal

_armed = os.environ.get("ORDERS_FAULT_POINT")
_passes_left = int(os.environ.get("ORDERS_FAULT_AFTER_BATCHES", "0"))


def hit(point: str) -> None:
    global _passes_left
    if _armed != point:
        return
    if _passes_left > 0:
        _passes_left -= 1
        return
    os.kill(os.getpid(), signal.SIGKILL)

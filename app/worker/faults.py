"""Fault points for the reliability tests: a worker can be told to stop dead at a named step.

`ORDERS_FAULT_POINT` names the step (`before_db_transaction`, `inside_db_transaction`,
`after_db_commit`, `after_dead_letter`); the worker signals itself the first time it reaches it,
after `ORDERS_FAULT_AFTER_BATCHES` passes (default 0). `ORDERS_FAULT_SIGNAL` is `SIGKILL` (a
crash, the default) or `SIGSTOP` (a freeze: the process becomes a zombie member until SIGCONT).
Unset, `hit()` is one comparison: production runs the very code paths the tests break.
"""

from __future__ import annotations

import os
import signal

_armed = os.environ.get("ORDERS_FAULT_POINT")
_passes_left = int(os.environ.get("ORDERS_FAULT_AFTER_BATCHES", "0"))
_signal = signal.Signals[os.environ.get("ORDERS_FAULT_SIGNAL", "SIGKILL")]


def hit(point: str) -> None:
    global _armed, _passes_left
    if _armed != point:
        return
    if _passes_left > 0:
        _passes_left -= 1
        return
    _armed = None  # once: a frozen worker that is woken up carries on normally
    os.kill(os.getpid(), _signal)

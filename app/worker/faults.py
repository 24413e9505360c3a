"""Fault points for the reliability tests: a worker can be told to stop dead at a named step, or
to hold one partition back.

`ORDERS_FAULT_POINT` names the step (`before_db_transaction`, `inside_db_transaction`,
`after_db_commit`, `after_dead_letter`); the worker signals itself the first time it reaches it,
after `ORDERS_FAULT_AFTER_BATCHES` passes (default 0). `ORDERS_FAULT_SIGNAL` is `SIGKILL` (a
crash, the default) or `SIGSTOP` (a freeze: the process becomes a zombie member until SIGCONT).

`ORDERS_FAULT_BLOCK_PARTITION=P` with `ORDERS_FAULT_BLOCK_FILE=/some/file`: while that file
exists, the worker stores nothing of partition P (if it owns P). Its records are dropped from
each batch before the transaction, the partition is sought back to where they began, as for a
retried batch, and paused; the other partitions keep flowing. The stall detector then sees P's
position stand still (cause: "blocked by fault point"). Remove the file and P flows again.
Without ORDERS_FAULT_BLOCK_FILE, P is blocked for as long as the process runs.

Unset, `hit()` and the block's check are one comparison each: production runs the very code
paths the tests break.
"""

from __future__ import annotations

import os
import signal

_armed = os.environ.get("ORDERS_FAULT_POINT")
_passes_left = int(os.environ.get("ORDERS_FAULT_AFTER_BATCHES", "0"))
_signal = signal.Signals[os.environ.get("ORDERS_FAULT_SIGNAL", "SIGKILL")]

_block = os.environ.get("ORDERS_FAULT_BLOCK_PARTITION", "")
BLOCK_PARTITION: int | None = int(_block) if _block else None
_block_file = os.environ.get("ORDERS_FAULT_BLOCK_FILE", "")


def hit(point: str) -> None:
    global _armed, _passes_left
    if _armed != point:
        return
    if _passes_left > 0:
        _passes_left -= 1
        return
    _armed = None  # once: a frozen worker that is woken up carries on normally
    os.kill(os.getpid(), _signal)


def blocking() -> bool:
    """Whether BLOCK_PARTITION is held back now (call only when it is set)."""
    return not _block_file or os.path.exists(_block_file)

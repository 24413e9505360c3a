"""When the worker's /readyz answers 200: the rule, apart from the server and the sampling.

Ready means: the member has started and joined its group, it is not stopping, and none of its
partitions has been STALLED or STOPPED for longer than WORKER_UNREADY_AFTER_STALL_S (counted from
when the stall detector first saw the status, itself WORKER_STALL_AFTER_S after the position
stopped moving). Failing then lets an orchestrator restart a member that cannot recover by
itself; failing at once would restart members for a stall a retry is about to clear.
"""

from __future__ import annotations

from collections.abc import Mapping


def overdue_stalls(
    stalled_since: Mapping[int, float], now: float, unready_after_s: float
) -> list[int]:
    """The partitions stalled for longer than the bound (sorted)."""
    return sorted(p for p, since in stalled_since.items() if now - since >= unready_after_s)


def is_ready(
    *,
    joined: bool,
    stopping: bool,
    stalled_since: Mapping[int, float],
    now: float,
    unready_after_s: float,
) -> bool:
    if stopping or not joined:
        return False
    return not overdue_stalls(stalled_since, now, unready_after_s)

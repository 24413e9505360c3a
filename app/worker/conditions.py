"""What this member knows, right now, that can hold a partition back: the cause the stall
detector names when a partition stops moving.

The consumer keeps it current where it learns something (a batch failed and is retried, a fetch
fails, a partition was fenced or is held by a fault point) and clears it where that is over (a
batch committed, a fetch succeeded, the partition was written). The detector only reads it.
"""

from __future__ import annotations

from collections.abc import Iterable

NO_KNOWN_CAUSE = "no known cause: the member runs, but this position has not moved"


class Conditions:
    def __init__(self) -> None:
        # Member-wide, by kind ("batch", "fetch"): each holds every partition of this member.
        self._member: dict[str, str] = {}
        # Per partition: what holds that one alone (fenced, blocked by a fault point).
        self._partitions: dict[int, str] = {}

    def note(self, kind: str, cause: str) -> None:
        self._member[kind] = cause

    def clear(self, kind: str) -> None:
        if self._member:  # the common case costs this one test
            self._member.pop(kind, None)

    def hold(self, partition: int, cause: str) -> None:
        self._partitions[partition] = cause

    def release(self, partitions: Iterable[int]) -> None:
        if self._partitions:  # the common case costs this one test
            for partition in partitions:
                self._partitions.pop(partition, None)

    def cause(self, partition: int) -> str:
        """The most specific cause known for this partition."""
        if partition in self._partitions:
            return self._partitions[partition]
        if self._member:
            return "; ".join(self._member.values())
        return NO_KNOWN_CAUSE

"""The commit watermark of one partition processed out of order: the lowest offset not yet done.

Records of one partition finish in any order when different keys run concurrently; a commit
says "everything below this offset is done", so it may only name the lowest unfinished offset.
Everything at or above it is redone after a crash (the gateway's charge key makes that harmless).
"""

from __future__ import annotations

from collections import deque


class OffsetWatermark:
    """Offsets taken in increasing order, finished in any order. Amortized O(1) per offset."""

    __slots__ = ("_done", "_end", "_unfinished")

    def __init__(self) -> None:
        self._unfinished: deque[int] = deque()  # taken and not yet passed by the watermark
        self._done: set[int] = set()  # finished but still above an unfinished offset
        self._end: int | None = None  # the next offset after everything taken or passed

    def take(self, offset: int) -> None:
        if self._end is not None and offset < self._end:
            msg = f"offset {offset} taken after {self._end - 1}: offsets must increase"
            raise ValueError(msg)
        self._unfinished.append(offset)
        self._end = offset + 1

    def passed_to(self, position: int) -> None:
        """The consumer's position after a fetch: offsets below it that carried no record
        (transaction markers, aborted or compacted records) are passed, not waited for."""
        if self._end is None or position > self._end:
            self._end = position

    def finish(self, offset: int) -> int:
        """Mark a taken offset done; returns how many taken offsets the watermark passed now
        (0 while a lower one is unfinished): what a caller may stop holding."""
        self._done.add(offset)
        unfinished, done = self._unfinished, self._done
        passed = 0
        while unfinished and unfinished[0] in done:
            done.discard(unfinished.popleft())
            passed += 1
        return passed

    @property
    def value(self) -> int | None:
        """The offset to commit: the lowest unfinished one, else the end; None before any."""
        return self._unfinished[0] if self._unfinished else self._end

    @property
    def pending(self) -> int:
        """Offsets taken and not yet passed by the watermark (finished above a gap included)."""
        return len(self._unfinished)

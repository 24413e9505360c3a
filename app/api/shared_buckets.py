"""Token buckets shared by the API processes of one host: a fixed table in a memory-mapped file.

Why by hand: no well-kept library shares token buckets between processes without a server
(`limits` 5.8, the usual choice, keeps them in one process's memory, or in Redis, Memcached or
MongoDB), and a server in the path of every order would cost more than the bucket itself. The
processes map the same file (MAP_SHARED: the same page-cache pages), so what one writes, the
next one reads.

Layout: `slots` slots of 24 bytes, (fingerprint u64, tokens f64, last refill f64); fingerprint 0
marks an empty slot. A client's key hashes with BLAKE2b (the same in every process, unlike
hash(), salted per process) to a 64-bit fingerprint, which picks a window of `probe` consecutive
slots; the client's bucket is the slot of its window that holds its fingerprint. Two clients
share a bucket only if their fingerprints are equal (a chance of 2^-64 per pair).

A client not in its window takes, in this order, an empty slot; a slot whose bucket is full again
(an idle client: forgetting it changes nothing); else the slot updated longest ago, whose client
comes back full. So the file's size is fixed whatever the number of clients, and an eviction is
only ever more lenient, never stricter, as in the in-memory limiter (app/api/rate_limit.py).

Each update reads, refills and writes a slot: two processes doing it at once would both spend
the same token. So it holds a POSIX record lock (fcntl.lockf) on its window's bytes: updates of
distinct windows never wait on each other, overlapping ones are serialised, and the kernel drops
the lock of a process that dies (a lock kept in the shared memory itself would stay held by a
process killed in the middle of an update). No other lock: within a process one event loop runs
`spend`, which never awaits.

Instants are time.monotonic(), CLOCK_MONOTONIC: one clock for every process of the host. It is
read under the lock, so a slot's last refill never moves backwards.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import mmap
import os
import struct
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from app.errors import ConfigurationError

SLOT = struct.Struct("<Qdd")
EMPTY = 0
# 16,384 slots of 24 bytes: 384 KiB per policy. Room for that many clients active at once
# within their refill time; past it, the idlest are forgotten (they come back full).
SLOTS = 16_384
# Slots a client's key may occupy: a short scan (one unpack of 192 bytes), and a client is
# forgotten only when 8 clients of its window are more recent than it.
PROBE = 8


# Remembered for the clients seen lately (a C-level cache: cheaper than hashing again).
@functools.lru_cache(maxsize=SLOTS)
def fingerprint(key: str) -> int:
    """The key's 64-bit fingerprint, the same in every process (never EMPTY)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def refill(tokens: float, last: float, now: float, rate: float, burst: float) -> float:
    """A bucket's tokens at `now`: refilled at `rate` per second since `last`, up to `burst`."""
    refilled = tokens + max(0.0, now - last) * rate
    return burst if refilled > burst else refilled


def slot_for(window: Sequence[float], key: int, now: float, rate: float, burst: float) -> int:
    """The index in `window` (flat: fingerprint, tokens, last, for each slot) of `key`'s bucket,
    or of the slot it takes: an empty one, else one full again, else the least recently used."""
    held_keys = window[0::3]
    if key in held_keys:  # the common case, in C
        return held_keys.index(key)
    empty = idle = -1
    oldest, oldest_at = 0, float("inf")
    for index in range(len(window) // 3):
        held, tokens, last = window[3 * index : 3 * index + 3]
        if held == EMPTY:
            if empty < 0:
                empty = index
            continue
        if idle < 0 and refill(tokens, last, now, rate, burst) >= burst:
            idle = index
        if last < oldest_at:
            oldest, oldest_at = index, last
    if empty >= 0:
        return empty
    return idle if idle >= 0 else oldest


class BucketTable:
    """One policy's buckets in the file at `path` (made by `create`), for every process."""

    def __init__(
        self,
        path: Path,
        rate: float,
        burst: float,
        *,
        slots: int = SLOTS,
        probe: int = PROBE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        size = slots * SLOT.size
        self._fd = os.open(path, os.O_RDWR)
        if os.fstat(self._fd).st_size != size:
            os.close(self._fd)
            msg = f"{path} is not a table of {slots} rate-limit buckets (made by another version?)"
            raise ConfigurationError(msg)
        self._map = mmap.mmap(self._fd, size)
        self._window = struct.Struct("<" + "Qdd" * probe)
        self._starts = slots - probe + 1  # windows never wrap around the end

    @staticmethod
    def create(path: Path, slots: int = SLOTS) -> None:
        """Make the file, empty (every slot EMPTY), before the processes that will map it start.

        Written aside, then renamed over `path`: a new inode. Truncating the old file in place
        would empty the buckets of any process still mapping it (and one touching its mapping
        while the file is shorter gets SIGBUS); those keep the old inode, theirs alone."""
        fd, aside = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as table:
                table.truncate(slots * SLOT.size)
            os.replace(aside, path)
        except BaseException:
            Path(aside).unlink(missing_ok=True)
            raise

    def spend(self, key: str) -> float | None:
        """Take one token from `key`'s bucket: None if there was one, else the tokens left."""
        held = fingerprint(key)
        start = (held % self._starts) * SLOT.size
        length = self._window.size
        fcntl.lockf(self._fd, fcntl.LOCK_EX, length, start)
        try:
            now = self.clock()
            window = self._window.unpack_from(self._map, start)
            index = slot_for(window, held, now, self.rate, self.burst)
            if window[3 * index] == held:
                tokens = refill(
                    window[3 * index + 1], window[3 * index + 2], now, self.rate, self.burst
                )
            else:  # a new bucket, or one that took an evicted client's slot: full
                tokens = self.burst
            spent = tokens >= 1.0
            SLOT.pack_into(
                self._map, start + index * SLOT.size, held, tokens - 1.0 if spent else tokens, now
            )
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, length, start)
        return None if spent else tokens

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

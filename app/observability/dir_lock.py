"""One `orders api --workers N` per shared directory: its parent holds the directory's lock.

The directory (PROMETHEUS_MULTIPROC_DIR) is prepared by the parent before its processes start:
emptied of metric files, its bucket tables made anew, readiness reports cleared
(app/api/process_set.py). A second parent given the same directory would do that under the first
set's running processes: their counts lost, their rate limits reset. So the parent takes an
exclusive flock on `<dir>/.lock` before anything else and keeps it while it lives; a second one
is refused. The kernel releases a flock when its holder dies, even by SIGKILL: no stale lock to
clear by hand. (Its processes, started by "spawn", do not inherit the descriptor: after a parent
killed by SIGKILL, they drain and exit on their own within seconds.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from app.errors import ConfigurationError

LOCK_FILE = ".lock"


@contextlib.contextmanager
def hold_multiprocess_dir(directory: str | Path) -> Iterator[None]:
    """Hold `directory`'s lock (it must exist) for the block, or raise ConfigurationError at
    once if another process holds it."""
    path = Path(directory) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            msg = (
                f"{directory} is in use by another `orders api --workers` (pid {holder}): "
                "give each set of API processes a PROMETHEUS_MULTIPROC_DIR of its own"
            )
            raise ConfigurationError(msg) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # named in the refusal above
        yield
    finally:
        os.close(fd)  # releases the lock

"""The Prometheus text of this process, or of every API process together.

Several API processes (`orders api --workers N`, issue 15) share one listening socket, so a scrape
reaches one of them at random: per-process registries would each show a fraction, and the series
would jump between processes from scrape to scrape. Giving each process its own port (one scrape
target per process, told apart by `instance`) would add them up too, but uvicorn's workers have
no port of their own, and every dashboard would need a `sum by` it could forget. So the API uses
prometheus-client's multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set: each process writes
its values to mmap'd files in that directory, and whichever process is scraped adds up every
process's files (MultiProcessCollector). Counters and histograms are summed, files of processes
that died included (a total must not fall back when a process is replaced); the gauges say how
(`multiprocess_mode="livesum"`: the sum over the processes alive). Without the variable (one
API process, the worker, the tests), the default in-memory registry, which is cheaper per update
(app/observability/lean.py: an add, against a lock, a pid check and an mmap write; timed
in-process, 1.4 against 8.5 us per accepted order) and also carries the process_* and python_*
metrics (multiprocess mode has none).

What `orders api --workers N` does (app/api/process_set.py), in the parent, before any worker:
- `prepare_multiprocess_dir(path)`: create it and empty it, because files left by an earlier run
  (or dead processes) would be added in;
- set os.environ[MULTIPROCESS_DIR] = path, so that each process has it BEFORE it imports
  prometheus_client: the library picks its value class (in memory or mmap) once, at import
  (`prometheus_client.values.ValueClass`). uvicorn starts its processes with multiprocessing's
  "spawn", a fresh interpreter that inherits the environment, so setting it in the parent is
  enough; importing prometheus_client in the parent is harmless (the parent serves nothing).
Each API process calls `mark_process_dead()` as its lifespan ends (app/api/app.py); one that
crashed cannot, so `render` also drops the live-gauge files of processes that no longer exist
before it adds up. The worker (app/worker) never sets the variable: each worker is one process,
scraped on its own port.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess, values

from app.errors import ConfigurationError

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

# prometheus-client's file for a gauge of a "live" mode: gauge_live<mode>_<pid>.db
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    """The directory shared by the API processes, if they share one."""
    return os.environ.get(MULTIPROCESS_DIR) or None


def check_multiprocess_mode() -> None:
    """Refuse to start when the variable and prometheus_client's choice disagree: set after the
    import, the process would keep its values in memory and every scrape would miss them."""
    in_files = bool(getattr(values.ValueClass, "_multiprocess", False))
    if in_files != (multiprocess_dir() is not None):
        msg = (
            f"{MULTIPROCESS_DIR} must be set before prometheus_client is imported "
            "(it was set or unset afterwards in this process)"
        )
        raise ConfigurationError(msg)


def prepare_multiprocess_dir(path: str | Path) -> Path:
    """Create `path`, or empty it of an earlier run's files. Call it once, in the parent, before
    any API process starts (emptying it under running processes would lose their counts)."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    return directory


def mark_process_dead(pid: int | None = None) -> None:
    """Drop a process's live gauges (in-flight requests, producer connected) from the sums."""
    directory = multiprocess_dir()
    if directory is not None:
        multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
            os.getpid() if pid is None else pid, directory
        )


def render() -> bytes:
    """This process's metrics, or, in multiprocess mode, every API process's added up."""
    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(REGISTRY)
    _forget_dead_processes(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def _forget_dead_processes(directory: str) -> None:
    """mark_process_dead for the processes that died without saying so (killed, crashed)."""
    for name in os.listdir(directory):
        found = _LIVE_GAUGE_FILE.match(name)
        if found is not None and not process_alive(int(found.group(1))):
            multiprocess.mark_process_dead(int(found.group(1)), directory)  # type: ignore[no-untyped-call]


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (a zombie not yet reaped counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True

"""`make bench-e2e`'s view of the machine: which processes are which kind, and the CPU each
kind used over a run (psutil), and the size of a topic's log on the broker's disk.

The broker and PostgreSQL are the shared ones of `make up`: found by the port they listen on
(the bootstrap's, DATABASE_URL's), never by name alone (tests start throwaway ones beside them).
PostgreSQL's backends serving other databases (other tests on the same server) are left out;
its shared processes (checkpointer, WAL writer, ...) are counted whole.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

POSTGRES_SHARED = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "logical replication launcher",
    "archiver",
    "stats collector",
)


def cpu_seconds(process: psutil.Process) -> float | None:
    """User + system CPU seconds, or None once the process is gone."""
    try:
        times = process.cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def tree(process: psutil.Process) -> list[psutil.Process]:
    """The process and its descendants. Listing them can fail when one ends meanwhile (a
    PostgreSQL backend closing): asked again, a few times."""
    for _ in range(5):
        try:
            return [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess as exc:
            if exc.pid == process.pid:
                return []
        except psutil.Error:
            pass
    return [process]


@dataclass
class Kind:
    """One kind of process (api, worker, ...): how to list its processes at a given moment."""

    name: str
    roots: list[psutil.Process]
    keep: Callable[[psutil.Process], bool] | None = None  # filters the tree
    before: dict[int, float] = field(default_factory=dict)

    def processes(self) -> list[psutil.Process]:
        found = [p for root in self.roots for p in tree(root)]
        if self.keep is not None:
            found = [p for p in found if self.keep(p)]
        return found

    def snapshot(self) -> dict[int, float]:
        taken = {}
        for process in self.processes():
            used = cpu_seconds(process)
            if used is not None:
                taken[process.pid] = used
        return taken


class CpuMeter:
    """CPU seconds each kind used between start() and stop(), and each process's share.

    A process that ends in between is lost (a lower bound); one that starts counts whole.
    """

    def __init__(self, kinds: Iterable[Kind]) -> None:
        self.kinds = list(kinds)
        self._machine_before = psutil.cpu_times()

    def start(self) -> None:
        for kind in self.kinds:
            kind.before = kind.snapshot()
            if not kind.before:  # its whole CPU would count as the run's at stop()
                msg = f"no process of kind {kind.name} found to measure"
                raise LookupError(msg)
        self._machine_before = psutil.cpu_times()

    def stop(self) -> tuple[dict[str, float], dict[str, list[float]], float]:
        """Per kind: CPU seconds; per kind: each process's CPU seconds; the machine's busy
        CPU seconds (every process, ours or not)."""
        used: dict[str, float] = {}
        per_process: dict[str, list[float]] = {}
        for kind in self.kinds:
            after = kind.snapshot()
            deltas = [cpu - kind.before.get(pid, 0.0) for pid, cpu in after.items()]
            used[kind.name] = sum(deltas)
            per_process[kind.name] = sorted(deltas, reverse=True)
        machine = psutil.cpu_times()
        busy = _busy(machine) - _busy(self._machine_before)
        return used, per_process, busy


def _busy(times: object) -> float:
    total = sum(getattr(times, name) for name in times._fields)  # type: ignore[attr-defined]
    idle = getattr(times, "idle", 0.0) + getattr(times, "iowait", 0.0)
    return float(total - idle)


def listening_port(process: psutil.Process) -> set[int]:
    with contextlib.suppress(psutil.Error):
        return {
            c.laddr.port for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN
        }
    return set()


@dataclass(frozen=True)
class Broker:
    process: psutil.Process
    log_dirs: tuple[Path, ...]


def find_broker(port: int) -> Broker:
    """The Kafka broker (kafka.Kafka <server.properties>) whose listeners include `port`."""
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if "kafka.Kafka" not in command or command[-1] == "kafka.Kafka":
            continue
        properties = _properties(Path(command[command.index("kafka.Kafka") + 1]))
        listeners = properties.get("listeners", "")
        if re.search(rf":{port}(,|$)", listeners.split(",CONTROLLER")[0] + ","):
            dirs = properties.get("log.dirs", properties.get("log.dir", ""))
            return Broker(process, tuple(Path(d) for d in dirs.split(",") if d))
    msg = f"no Kafka broker on this machine listens on port {port}"
    raise LookupError(msg)


def _properties(path: Path) -> dict[str, str]:
    found = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key, value = line.split("=", 1)
                found[key.strip()] = value.strip()
    return found


def topic_log_bytes(broker: Broker, topic: str) -> int:
    """The bytes of the topic's log segments (*.log) on the broker's disk. Indexes are left
    out: Kafka preallocates them (sparse files of index.size.max.bytes)."""
    total = 0
    for log_dir in broker.log_dirs:
        for partition in log_dir.glob(f"{topic}-*"):
            if partition.name.rsplit("-", 1)[0] != topic:
                continue
            for segment in partition.glob("*.log"):
                with contextlib.suppress(OSError):
                    total += segment.stat().st_size
    return total


def find_postmaster(port: int) -> psutil.Process:
    """PostgreSQL's postmaster started with `-p port` (or the only one, on the default port)."""
    postmasters = [
        process
        for process in psutil.process_iter(["cmdline", "name"])
        if process.info["name"] == "postgres"
        and (process.info["cmdline"] or [""])[0].endswith("/postgres")
    ]
    for process in postmasters:
        command = process.info["cmdline"]
        if "-p" in command and command[command.index("-p") + 1] == str(port):
            return process
    if port == 5432 and len(postmasters) == 1:
        return postmasters[0]
    msg = f"no PostgreSQL server on this machine was started on port {port}"
    raise LookupError(msg)


def serves_database(database: str) -> Callable[[psutil.Process], bool]:
    """A filter for the postmaster's tree: its shared processes, and the backends (and
    autovacuum workers) of `database`; not the backends of other databases."""

    def keep(process: psutil.Process) -> bool:
        try:
            title = " ".join(process.cmdline())
        except psutil.Error:
            return False
        if not title.startswith("postgres: "):
            return True  # the postmaster itself
        rest = title.removeprefix("postgres: ")
        if rest.startswith(POSTGRES_SHARED):
            return True
        if rest.startswith("autovacuum worker"):
            return database in rest.split()
        if rest.startswith("parallel worker"):
            return True
        return rest.split()[1:2] == [database]

    return keep

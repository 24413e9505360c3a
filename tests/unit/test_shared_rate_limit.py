"""The token buckets several API processes share (app/api/shared_buckets.py): one bucket per
client whichever process takes, the same arithmetic and answers as in memory, a fixed table
whose evictions are only ever more lenient."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.api.rate_limit import (
    POLICY,
    SERVICE_POLICY,
    RateLimitedError,
    RateLimiter,
    SharedRateLimiter,
    create_tables,
    table_file,
)
from app.api.shared_buckets import SLOT, BucketTable, fingerprint, refill, slot_for
from app.errors import ConfigurationError
from app.settings import ApiSettings
from tests.unit.test_rate_limit import Clock, spend

ROOT = Path(__file__).resolve().parents[2]


def table(tmp_path: Path, rate: float, burst: float, clock: Clock, **shape: int) -> BucketTable:
    shape.setdefault("slots", 64)
    path = tmp_path / "t.buckets"
    if not path.exists():
        BucketTable.create(path, shape["slots"])
    return BucketTable(path, rate, burst, clock=clock, **shape)


def admitted(buckets: BucketTable, key: str, times: int) -> int:
    return sum(buckets.spend(key) is None for _ in range(times))


def test_two_processes_tables_on_one_file_are_one_bucket(tmp_path: Path) -> None:
    clock = Clock()
    one, other = table(tmp_path, 1, 10, clock), table(tmp_path, 1, 10, clock)
    taken = sum((one if turn % 2 else other).spend("customer-1") is None for turn in range(30))
    assert taken == 10
    clock.now += 3  # 3 tokens back, seen by both
    assert admitted(one, "customer-1", 2) + admitted(other, "customer-1", 5) == 3


def test_a_refusal_reports_the_tokens_left(tmp_path: Path) -> None:
    clock = Clock()
    buckets = table(tmp_path, 4, 2, clock)
    assert admitted(buckets, "a", 2) == 2
    clock.now += 0.1
    left = buckets.spend("a")
    assert left == pytest.approx(0.4)


def test_refill_is_capped_at_the_burst_and_never_negative() -> None:
    assert refill(1.0, 10.0, 12.0, 2.0, 100.0) == 5.0
    assert refill(1.0, 10.0, 1e6, 2.0, 100.0) == 100.0
    assert refill(3.0, 10.0, 9.0, 2.0, 100.0) == 3.0  # an instant before `last`: no refill


def test_the_fingerprint_is_the_same_in_every_process() -> None:
    """Not hash(): salted per process (PYTHONHASHSEED), it would give each process other slots."""
    code = "from app.api.shared_buckets import fingerprint; print(fingerprint('customer-1'))"
    seen = set()
    for seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        seen.add(done.stdout.strip())
    assert seen == {str(fingerprint("customer-1"))}


def window(*slots: tuple[int, float, float]) -> tuple[float, ...]:
    return tuple(value for slot in slots for value in slot)


def test_a_client_finds_its_own_slot_anywhere_in_its_window() -> None:
    slots = window((0, 0.0, 0.0), (7, 1.0, 5.0), (9, 0.0, 9.0))
    assert slot_for(slots, 9, now=10.0, rate=1.0, burst=10.0) == 2


def test_a_new_client_takes_an_empty_slot_first() -> None:
    slots = window((7, 10.0, 1.0), (0, 0.0, 0.0), (8, 0.0, 9.0))
    assert slot_for(slots, 9, now=10.0, rate=1.0, burst=10.0) == 1


def test_then_the_slot_of_an_idle_client_whose_bucket_is_full_again() -> None:
    # 8 spent everything at 9.0 (1 token back by 10.0); 7 is full again; 6 is the oldest.
    slots = window((6, 0.0, 1.0), (8, 0.0, 9.0), (7, 5.0, 5.0))
    assert slot_for(slots, 9, now=10.0, rate=1.0, burst=10.0) == 2


def test_else_the_least_recently_used_one() -> None:
    slots = window((6, 0.0, 8.0), (8, 0.0, 9.0), (7, 0.0, 7.5))
    assert slot_for(slots, 9, now=10.0, rate=1.0, burst=10.0) == 2


def test_an_evicted_client_comes_back_full_never_stricter(tmp_path: Path) -> None:
    """One window of 4 slots: a 5th client evicts the least recently used of 4 spent ones."""
    clock = Clock()
    buckets = table(tmp_path, 0.001, 3, clock, slots=4, probe=4)
    for n in range(4):
        assert admitted(buckets, f"c{n}", 5) == 3
        clock.now += 1
    assert admitted(buckets, "newcomer", 1) == 1  # takes c0's slot
    assert admitted(buckets, "c0", 5) == 3  # forgotten: a whole burst again
    assert admitted(buckets, "c3", 1) == 0  # kept: still empty


def test_the_table_is_fixed_whatever_the_number_of_clients(tmp_path: Path) -> None:
    clock = Clock()
    buckets = table(tmp_path, 1, 5, clock, slots=64, probe=8)
    for n in range(5_000):
        buckets.spend(f"client-{n}")
    assert (tmp_path / "t.buckets").stat().st_size == 64 * SLOT.size


def test_a_file_of_another_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.buckets"
    BucketTable.create(path, slots=32)
    with pytest.raises(ConfigurationError, match="not a table of 64"):
        BucketTable(path, 1, 5, slots=64)


def test_a_new_table_leaves_a_running_sets_mapping_alone(tmp_path: Path) -> None:
    """create() makes a new file (a new inode): a process still mapping the old one keeps its
    buckets (truncating in place would empty them, and could SIGBUS a process touching its
    mapping while the file was short)."""
    clock = Clock()
    path = tmp_path / "t.buckets"
    running = table(tmp_path, 0.001, 3, clock)
    assert admitted(running, "customer-1", 5) == 3
    before = path.stat().st_ino
    BucketTable.create(path, slots=64)
    assert path.stat().st_ino != before
    assert admitted(running, "customer-1", 1) == 0  # its bucket still spent
    fresh = BucketTable(path, 0.001, 3, slots=64, clock=clock)
    assert admitted(fresh, "customer-1", 5) == 3  # the new table: empty
    assert [entry.name for entry in tmp_path.iterdir()] == ["t.buckets"]  # nothing left aside
    running.close()
    fresh.close()


HAMMER = """
import sys
from pathlib import Path
from app.api.shared_buckets import BucketTable
buckets = BucketTable(Path(sys.argv[1]), 0.0001, 30_000)
print("ready", flush=True)
sys.stdin.readline()
print(sum(buckets.spend("customer-1") is None for _ in range(20_000)))
"""


def test_processes_taking_at_once_spend_each_token_once(tmp_path: Path) -> None:
    """Without the lock, two read-modify-writes at once would both spend the same token."""
    path = tmp_path / "t.buckets"
    BucketTable.create(path)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", HAMMER, str(path)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for process in processes:  # all started, then all at once
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
    counts = []
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.close()
    for process in processes:
        assert process.stdout is not None
        counts.append(int(process.stdout.read()))
        process.stdout.close()
        assert process.wait(timeout=120) == 0
    assert sum(counts) == 30_000, counts


def test_the_shared_limiter_answers_as_the_one_in_memory(tmp_path: Path) -> None:
    api = ApiSettings(rate_limit_per_s=4, rate_limit_burst=8)
    create_tables(tmp_path)
    clock = Clock()
    shared = SharedRateLimiter(table_file(tmp_path, POLICY), 4, 8, clock=clock)
    alone = RateLimiter(4, 8, clock=clock)
    for limiter in (shared, alone):
        assert spend(limiter, "a", 8) == 8
    clock.now += 0.1
    refusals = []
    for limiter in (shared, alone):
        with pytest.raises(RateLimitedError) as refused:
            limiter.take("a")
        refusals.append(refused.value.headers)
    assert refusals[0] == refusals[1]
    assert refusals[0]["RateLimit-Policy"] == '"client";q=8;w=2'
    both = RateLimiter.from_settings(api, tmp_path)
    assert isinstance(both, SharedRateLimiter)
    assert isinstance(both.services, SharedRateLimiter)
    assert both.services.name == SERVICE_POLICY


def test_a_disabled_policy_needs_no_table(tmp_path: Path) -> None:
    limiter = SharedRateLimiter(tmp_path / "absent.buckets", 0, 10)
    assert limiter.table is None
    assert spend(limiter, "a", 100) == 100

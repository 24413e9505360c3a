"""The key-ordered scheduler without services: order per key, bounds, watermarks, revocation."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.payments.key_ordered import KeyOrderedScheduler, SchedulerStalledError


@dataclass(frozen=True)
class Rec:
    partition: int
    offset: int
    key: bytes | None


def records(keys: list[str], partitions: int = 1) -> list[Rec]:
    """One record per entry of `keys`, on partition hash-of-key (as a keyed producer would)."""
    next_offset: dict[int, int] = defaultdict(int)
    out = []
    for key in keys:
        partition = sum(key.encode()) % partitions
        out.append(Rec(partition, next_offset[partition], key.encode()))
        next_offset[partition] += 1
    return out


@st.composite
def workloads(draw: st.DrawFn) -> tuple[list[Rec], list[float], int, int]:
    keys = draw(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=60))
    partitions = draw(st.integers(1, 3))
    recs = records(keys, partitions)
    # Each record's own latency: later records of a key often finish faster than earlier ones.
    latencies = draw(
        st.lists(
            st.sampled_from([0.0, 0.0005, 0.001, 0.003]), min_size=len(recs), max_size=len(recs)
        )
    )
    max_in_flight = draw(st.integers(1, 6))
    max_buffered = draw(st.integers(max_in_flight, 12))
    return recs, latencies, max_in_flight, max_buffered


@settings(max_examples=60, deadline=None)
@given(workloads())
def test_each_key_in_offset_order_within_bounds_and_watermark_never_passes_unfinished(
    workload: tuple[list[Rec], list[float], int, int],
) -> None:
    recs, latencies, max_in_flight, max_buffered = workload
    latency = dict(zip(recs, latencies, strict=True))

    async def scenario() -> None:
        running_keys: set[bytes | None] = set()
        done: list[Rec] = []
        unfinished: dict[int, set[int]] = defaultdict(set)
        scheduler: KeyOrderedScheduler[Rec]

        def watermark_below_every_unfinished() -> None:
            for partition, offsets in unfinished.items():
                mark = scheduler.watermark(partition)
                if offsets:
                    assert mark is not None
                    assert mark <= min(offsets), (partition, mark, sorted(offsets))

        async def process(rec: Rec) -> None:
            assert rec.key not in running_keys, f"two records of key {rec.key!r} at once"
            running_keys.add(rec.key)
            assert scheduler.in_flight <= max_in_flight
            watermark_below_every_unfinished()
            await asyncio.sleep(latency[rec])
            watermark_below_every_unfinished()  # each completion, just before it counts
            running_keys.discard(rec.key)
            unfinished[rec.partition].discard(rec.offset)
            done.append(rec)

        scheduler = KeyOrderedScheduler(
            process, max_in_flight=max_in_flight, max_buffered=max_buffered
        )
        for rec in recs:
            await scheduler.submit(rec)
            # Before the record's task first runs: submit only creates it.
            unfinished[rec.partition].add(rec.offset)
            assert scheduler.buffered <= max_buffered
            watermark_below_every_unfinished()
        await scheduler.drain(timeout=10)

        # An assertion inside process surfaces here: the scheduler keeps what process raised.
        assert not scheduler.failures, scheduler.failures[0].error
        assert sorted(done, key=lambda r: (r.partition, r.offset)) == sorted(
            recs, key=lambda r: (r.partition, r.offset)
        ), "every record exactly once"
        for key in {r.key for r in recs}:
            offsets = [(r.partition, r.offset) for r in done if r.key == key]
            assert offsets == sorted(offsets), f"key {key!r} out of offset order"
        assert scheduler.peak_in_flight <= max_in_flight
        for partition in {r.partition for r in recs}:
            last = max(r.offset for r in recs if r.partition == partition)
            assert scheduler.watermark(partition) == last + 1
        assert scheduler.buffered == 0

    asyncio.run(scenario())


async def test_different_keys_overlap_and_one_key_runs_serially() -> None:
    async def process(_: Rec) -> None:
        await asyncio.sleep(0.05)

    scheduler: KeyOrderedScheduler[Rec] = KeyOrderedScheduler(
        process, max_in_flight=20, max_buffered=40
    )
    started = time.perf_counter()
    for rec in records([f"customer-{n}" for n in range(20)]):
        await scheduler.submit(rec)
    await scheduler.drain(timeout=5)
    parallel = time.perf_counter() - started
    assert parallel < 0.5, f"20 keys x 50 ms took {parallel:.2f}s: not concurrent"

    started = time.perf_counter()
    for rec in records(["one"] * 5):
        await scheduler.submit(Rec(0, rec.offset + 100, rec.key))
    await scheduler.drain(timeout=5)
    # Serial: 5 x 50 ms = 0.25 s; overlapped it would take ~0.05 s. The margin keeps a timer
    # that fires a hair early from failing a correct run.
    assert time.perf_counter() - started >= 0.2, "one key's 5 records overlapped"


async def test_concurrency_never_exceeds_the_bound() -> None:
    running = 0
    seen: list[int] = []

    async def process(_: Rec) -> None:
        nonlocal running
        running += 1
        seen.append(running)
        await asyncio.sleep(0.002)
        running -= 1

    scheduler: KeyOrderedScheduler[Rec] = KeyOrderedScheduler(
        process, max_in_flight=7, max_buffered=50
    )
    for rec in records([f"k{n}" for n in range(200)], partitions=6):
        await scheduler.submit(rec)
    await scheduler.drain(timeout=10)
    assert max(seen) == 7  # reached, never passed
    assert scheduler.peak_in_flight == 7


async def test_a_hot_key_meets_back_pressure_not_unbounded_memory() -> None:
    release = asyncio.Event()

    async def process(_: Rec) -> None:
        await release.wait()

    scheduler: KeyOrderedScheduler[Rec] = KeyOrderedScheduler(
        process, max_in_flight=4, max_buffered=5
    )
    hot = records(["hot"] * 8)
    for rec in hot[:5]:
        await scheduler.submit(rec)
    assert scheduler.buffered == 5
    assert scheduler.in_flight == 1  # one key: one at a time
    sixth = asyncio.create_task(scheduler.submit(hot[5]))
    await asyncio.sleep(0.05)
    assert not sixth.done(), "submit must wait while the buffer is full"
    release.set()
    await asyncio.wait_for(sixth, 2)
    for rec in hot[6:]:
        await scheduler.submit(rec)
    await scheduler.drain(timeout=2)
    assert scheduler.watermark(0) == 8


async def test_a_failure_blocks_its_key_only_holds_the_watermark_and_is_observable() -> None:
    done: list[Rec] = []

    async def process(rec: Rec) -> None:
        if rec.key == b"bad" and rec.offset == 1:
            msg = "declined by a bug"
            raise RuntimeError(msg)
        done.append(rec)

    scheduler: KeyOrderedScheduler[Rec] = KeyOrderedScheduler(
        process, max_in_flight=4, max_buffered=8
    )
    recs = records(["bad", "bad", "good", "bad", "good", "good"])
    for rec in recs:
        await scheduler.submit(rec)
    await scheduler.drain(timeout=2)
    assert [r.offset for r in done] == [0, 2, 4, 5]  # bad@3 waits behind bad@1
    assert scheduler.watermark(0) == 1, "never committed past the failed record"
    [failure] = scheduler.failures
    assert failure.record.offset == 1
    assert isinstance(failure.error, RuntimeError)
    assert scheduler.stalled_partitions() == {0: failure}
    # Offsets 1..5 stay held: finished records above the failure count until it is passed.
    assert scheduler.buffered == 5
    # Other keys still flow, but only until the buffer is full: then submit says why.
    for offset in (6, 7, 8):
        await scheduler.submit(Rec(0, offset, b"good"))
    await scheduler.drain(timeout=2)
    assert [r.offset for r in done][-3:] == [6, 7, 8]
    assert not scheduler.has_room()
    with pytest.raises(SchedulerStalledError, match="failed record"):
        await asyncio.wait_for(scheduler.submit(Rec(0, 9, b"good")), 2)
    # Revoking the partition releases it all; the next owner redoes from offset 1.
    assert await scheduler.revoke([0], grace_s=0) == {0: 1}
    assert scheduler.buffered == 0
    assert scheduler.stalled_partitions() == {}


async def test_a_slow_record_bounds_what_finishes_above_it() -> None:
    """While one key's record is slow, other keys finish, but their offsets stay above the
    watermark: they count against the buffer until it passes them, or memory grows unbounded."""
    slow = asyncio.Event()
    finished: list[int] = []

    async def process(rec: Rec) -> None:
        if rec.key == b"slow":
            await slow.wait()
        finished.append(rec.offset)

    scheduler: KeyOrderedScheduler[Rec] = KeyOrderedScheduler(
        process, max_in_flight=2, max_buffered=4
    )
    await scheduler.submit(Rec(0, 0, b"slow"))
    for offset in (1, 2, 3):
        await scheduler.submit(Rec(0, offset, f"fast-{offset}".encode()))
    await asyncio.sleep(0.05)
    assert finished == [1, 2, 3]
    assert scheduler.watermark(0) == 0
    assert scheduler.buffered == 4
    assert not scheduler.has_room()
    fifth = asyncio.create_task(scheduler.submit(Rec(0, 4, b"fast-4")))
    await asyncio.sleep(0.05)
    assert not fifth.done(), "a fifth record was taken while four are held behind the slow one"
    assert not await scheduler.wait_for_room(timeout=0.01)
    slow.set()
    assert await asyncio.wait_for(fifth, 2) is True
    await scheduler.drain(timeout=2)
    assert scheduler.watermark(0) == 5
    assert scheduler.buffered == 0
    assert scheduler.has_room()


async def test_a_submit_waiting_for_room_when_its_partition_is_revoked_drops_the_record() -> None:
    """The record must not run: the partition's next owner processes it, and a record of a
    revoked partition running on would process it twice at once (a zombie)."""
    started: list[Rec] = []
    gate = asyncio.Event()

    async def process(rec: Rec) -> None:
        started.append(rec)
        await gate.wait()

    scheduler: KeyOrderedScheduler[Rec] = KeyOrderedScheduler(
        process, max_in_flight=1, max_buffered=1
    )
    await scheduler.submit(Rec(0, 0, b"a"))
    blocked = asyncio.create_task(scheduler.submit(Rec(0, 1, b"b")))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    revoking = asyncio.create_task(scheduler.revoke([0], grace_s=2))
    await asyncio.sleep(0.01)
    gate.set()  # the running record finishes within the grace: the buffer has room again
    assert await asyncio.wait_for(revoking, 3) == {0: 1}
    assert await asyncio.wait_for(blocked, 1) is False
    await asyncio.sleep(0.01)
    assert Rec(0, 1, b"b") not in started, "a record of a revoked partition ran"
    assert scheduler.in_flight == 0
    assert scheduler.buffered == 0
    assert scheduler.watermark(0) is None
    # A submit during a revocation is dropped too; after it, the partition is taken again.
    gate.clear()
    await scheduler.submit(Rec(0, 1, b"b"))
    revoking = asyncio.create_task(scheduler.revoke([0], grace_s=2))
    await asyncio.sleep(0.01)
    assert await scheduler.submit(Rec(0, 2, b"c")) is False
    gate.set()
    assert await asyncio.wait_for(revoking, 3) == {0: 2}
    assert await scheduler.submit(Rec(0, 2, b"c")) is True
    await scheduler.drain(timeout=2)
    assert scheduler.watermark(0) == 3


async def test_a_second_revoke_of_a_partition_waits_for_the_first_which_reports_it() -> None:
    gate = asyncio.Event()

    async def process(_: Rec) -> None:
        await gate.wait()

    scheduler: KeyOrderedScheduler[Rec] = KeyOrderedScheduler(
        process, max_in_flight=2, max_buffered=4
    )
    await scheduler.submit(Rec(0, 0, b"a"))
    first = asyncio.create_task(scheduler.revoke([0], grace_s=2))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(scheduler.revoke([0], grace_s=0))
    await asyncio.sleep(0.01)
    assert not second.done(), "the second revoke must not cut the first one's grace short"
    gate.set()  # within the first's grace: the record finishes rather than being cancelled
    assert await asyncio.wait_for(first, 3) == {0: 1}
    assert await asyncio.wait_for(second, 1) == {}


async def test_revoke_cancels_running_drops_queued_and_returns_the_watermark() -> None:
    started: list[Rec] = []
    gate = asyncio.Event()

    async def process(rec: Rec) -> None:
        started.append(rec)
        if rec.partition == 0:
            await gate.wait()  # partition 0's records hang until cancelled

    scheduler: KeyOrderedScheduler[Rec] = KeyOrderedScheduler(
        process, max_in_flight=10, max_buffered=20
    )
    on_0 = [Rec(0, 0, b"a"), Rec(0, 1, b"a"), Rec(0, 2, b"b")]
    on_1 = [Rec(1, 0, b"c"), Rec(1, 1, b"d")]
    for rec in on_0 + on_1:
        await scheduler.submit(rec)
    await asyncio.sleep(0.01)
    assert scheduler.watermark(1) == 2
    assert scheduler.watermark(0) == 0
    final = await scheduler.revoke([0], grace_s=0)
    assert final == {0: 0}  # the new owner starts at the first unfinished offset
    assert scheduler.watermark(0) is None
    assert scheduler.in_flight == 0
    assert scheduler.buffered == 0
    assert Rec(0, 1, b"a") not in started, "a queued record of a revoked partition ran"
    # Reassigned later: it is taken again from the committed watermark.
    gate.set()
    await scheduler.submit(Rec(0, 0, b"a"))
    await scheduler.drain(timeout=2)
    assert scheduler.watermark(0) == 1


async def test_revoke_lets_running_records_finish_within_the_grace() -> None:
    async def process(_: Rec) -> None:
        await asyncio.sleep(0.05)

    scheduler: KeyOrderedScheduler[Rec] = KeyOrderedScheduler(
        process, max_in_flight=1, max_buffered=5
    )
    for rec in records(["a", "b", "c"]):
        await scheduler.submit(rec)
    final = await scheduler.revoke([0], grace_s=2)
    assert final == {0: 1}  # the running one finished; the two queued ones were dropped
    assert scheduler.buffered == 0


async def test_offsets_without_records_are_passed_when_all_before_are_done() -> None:
    async def process(_: Rec) -> None:
        await asyncio.sleep(0)

    scheduler: KeyOrderedScheduler[Rec] = KeyOrderedScheduler(
        process, max_in_flight=2, max_buffered=4
    )
    await scheduler.submit(Rec(0, 3, b"a"))
    scheduler.fetched_to(0, 6)  # 4 and 5: a transaction marker, an aborted record
    assert scheduler.watermark(0) == 3
    await scheduler.drain(timeout=1)
    assert scheduler.watermark(0) == 6
    with pytest.raises(ValueError, match="must increase"):
        await scheduler.submit(Rec(0, 5, b"a"))


async def test_keyless_records_have_no_order_to_keep() -> None:
    active = 0
    peak = 0

    async def process(_: Rec) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1

    scheduler: KeyOrderedScheduler[Rec] = KeyOrderedScheduler(
        process, max_in_flight=5, max_buffered=10
    )
    for offset in range(5):
        await scheduler.submit(Rec(0, offset, None))
    await scheduler.drain(timeout=1)
    assert peak == 5


def test_bounds_are_checked() -> None:
    async def process(_: Rec) -> None:
        return None

    with pytest.raises(ValueError, match="max_in_flight"):
        KeyOrderedScheduler(process, max_in_flight=5, max_buffered=4)


async def test_a_revocation_frees_room_without_a_false_stall() -> None:
    """A cancelled record still counts until its partition is forgotten: a submit of another
    partition waiting meanwhile must wait for that, not report a stall."""

    async def process(rec: Rec) -> None:
        if rec.partition == 0:
            await asyncio.Event().wait()  # hangs until cancelled

    scheduler: KeyOrderedScheduler[Rec] = KeyOrderedScheduler(
        process, max_in_flight=1, max_buffered=1
    )
    await scheduler.submit(Rec(0, 0, b"a"))
    waiting = asyncio.create_task(scheduler.submit(Rec(1, 0, b"b")))
    assert await scheduler.revoke([0], grace_s=0.05) == {0: 0}
    assert await asyncio.wait_for(waiting, 2) is True
    await scheduler.drain(timeout=2)
    assert scheduler.watermark(1) == 1

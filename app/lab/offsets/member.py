"""One consumer of the offsets lab, run as a child process so that it can be killed -9.

`python -m app.lab.offsets.member --topic T --group G --strategy S --out FILE [--crash-after K]`
reads partition 0 of T from its group's committed position, processes each record (a few ms of
work, then the record's offset appended to FILE: written data survives a kill -9, which ends the
process, not the kernel), and commits the way S says. With --crash-after, once K records are
processed and it is in the middle of a batch, it prints `mid-batch ...` and freezes (a blocking
sleep: no commit, no heartbeat, nothing of its own runs any more) until the parent kills it -9.
Without, it runs to the end of the topic and prints `done ...`.

The partition is assigned by hand (`assign`), with the group only as the owner of the committed
offsets: Exercise 3 is about commits, and a restarted member of a subscribed group would first
wait out the dead one's session.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from app.kafka_security import kafka_client_security
from app.lab.offsets.rules import AUTO, STRATEGIES, CommitStrategy, kill_here, mid_batch
from app.settings import load_settings

FROZEN_S = 60.0  # the parent kills within milliseconds; this only bounds a parent that died


class Member:
    def __init__(self, args: argparse.Namespace) -> None:
        kafka = load_settings().kafka
        self.strategy: CommitStrategy = args.strategy
        self.args = args
        self.tp = TopicPartition(args.topic, 0)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-lab-{args.strategy}",
            group_id=args.group,
            enable_auto_commit=self.strategy in AUTO,
            auto_commit_interval_ms=args.auto_commit_interval_ms,
            auto_offset_reset="earliest",
            request_timeout_ms=kafka.request_timeout_ms,
            **kafka_client_security(kafka),
        )
        self.out = os.open(args.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.processed = 0
        self.commits = 0
        # Auto-commit only: the committed offset last seen, and when it was seen to change.
        self.watching = False
        self.committed: int | None = None
        self.committed_seen_at: float | None = None

    async def commit(self, next_offset: int) -> None:
        """A synchronous commit: awaited, so the loop goes on only once the broker has it."""
        await self.consumer.commit({self.tp: next_offset})
        self.commits += 1

    async def run(self) -> None:
        await self.consumer.start()
        self.consumer.assign([self.tp])
        end = (await self.consumer.end_offsets([self.tp]))[self.tp]
        print(f"started position={await self.consumer.position(self.tp)} end={end}", flush=True)
        began = time.monotonic()
        while await self.consumer.position(self.tp) < end:
            fetched = await self.consumer.getmany(
                self.tp, max_records=self.args.batch, timeout_ms=500
            )
            if batch := fetched.get(self.tp, []):
                await self.process(batch)
        elapsed = time.monotonic() - began
        print(
            f"done processed={self.processed} commits={self.commits} seconds={elapsed:.3f}",
            flush=True,
        )
        await self.consumer.stop()

    async def process(self, batch: list[ConsumerRecord[bytes, bytes]]) -> None:
        """The loop that makes each strategy what it is."""
        if self.strategy == "manual_before_batch":
            await self.commit(batch[-1].offset + 1)  # done, on the record, before it is done
        for index, record in enumerate(batch):
            await asyncio.sleep(self.args.work_ms / 1000)  # the work
            os.write(self.out, f"{record.offset}\n".encode())  # its effect: processed from here
            self.processed += 1
            await self.maybe_crash(batch, index)
            if self.strategy == "manual_per_record":
                await self.commit(record.offset + 1)
        if self.strategy == "manual_after_batch":
            await self.commit(batch[-1].offset + 1)
        # auto_commit, auto_commit_ahead: the consumer's timer commits in the background.

    async def maybe_crash(self, batch: list[ConsumerRecord[bytes, bytes]], index: int) -> None:
        crash_after = self.args.crash_after
        if not crash_after or self.processed < crash_after or not mid_batch(index, len(batch)):
            return
        batch_start, offset = batch[0].offset, batch[index].offset
        since_commit_s = await self.watch_auto_commits() if self.strategy in AUTO else None
        interval_s = self.args.auto_commit_interval_ms / 1000
        committed = self.committed
        if kill_here(self.strategy, committed, batch_start, offset + 1, since_commit_s, interval_s):
            print(
                f"mid-batch offset={offset} batch_start={batch_start} index={index} "
                f"committed={committed} processed={self.processed} commits={self.commits}",
                flush=True,
            )
            # Blocking on purpose: the event loop stops too, and aiokafka's commit timer with it.
            time.sleep(FROZEN_S)  # noqa: ASYNC251
            sys.exit(3)

    async def watch_auto_commits(self) -> float | None:
        """Seconds since the timer's last commit, as seen by asking the broker for the committed
        offset at each record; None until a commit has been seen to happen."""
        committed = await self.consumer.committed(self.tp)
        now = time.monotonic()
        if self.watching and committed != self.committed:
            self.committed_seen_at = now
        self.watching, self.committed = True, committed
        return None if self.committed_seen_at is None else now - self.committed_seen_at


def main() -> None:
    parser = argparse.ArgumentParser(description="one offsets-lab consumer, as a child process")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--strategy", choices=STRATEGIES, required=True)
    parser.add_argument("--out", required=True, help="file the processed offsets are appended to")
    parser.add_argument("--batch", type=int, default=50, help="records per getmany")
    parser.add_argument("--work-ms", type=float, default=2.0, help="work per record")
    parser.add_argument("--auto-commit-interval-ms", type=int, default=1000)
    parser.add_argument("--crash-after", type=int, default=0, help="records, then freeze mid-batch")
    asyncio.run(_run(parser.parse_args()))


async def _run(args: argparse.Namespace) -> None:
    await Member(args).run()  # aiokafka's clients must be made inside the running loop


if __name__ == "__main__":
    main()

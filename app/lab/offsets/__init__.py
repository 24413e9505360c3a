"""`orders lab offsets`: Exercise 3, what each commit strategy redelivers or loses after a crash.

The course: "Auto-commit: Offsets committed automatically at intervals; Manual commit:
Application controls when to commit offsets; Commit strategies: Sync vs Async, per-message vs
batch", and Exercise 3, a consumer with `enable.auto.commit=false`.

How it is checked: a topic of N records; for each strategy a consumer child process
(`python -m app.lab.offsets.member`) reads it in batches, processes each record (a few ms of work,
then its offset appended to a file) and commits the strategy's way. It is killed -9 in the
middle of a batch, then restarted in the same group and run to the end. The file then says which
records were processed twice (redelivered) and which never (lost):
- auto_commit / auto_commit_ahead: aiokafka's background timer (the two cases a crash can meet);
- manual_after_batch: commit the batch's last offset + 1 once the batch is processed;
- manual_per_record: commit after each record;
- manual_before_batch: commit the batch, then process it (the at-most-once shape).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from app.lab.deadline import within
from app.lab.groups.child import fields, lab_child
from app.lab.groups.traffic import fill
from app.lab.offsets.rules import KILL_CASE, STRATEGIES, CommitStrategy, count_processed
from app.lab.report import Cell, Table
from app.lab.workspace import LabWorkspace
from app.settings import Settings

__all__ = ["add_arguments", "run_from_args"]

STEP_S = 60.0
CLAIM = (
    "Auto-commit: Offsets committed automatically at intervals; Manual commit: Application "
    "controls when to commit offsets; Commit strategies: Sync vs Async, per-message vs batch"
)
COLUMNS = [
    "strategy",
    "records",
    "processed",
    "redelivered",
    "lost",
    "commits",
    "killed after",
    "restarted at",
    "records/s",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=int, default=2000, help="records (default 2000)")
    parser.add_argument("--batch", type=int, default=50, help="records per batch (default 50)")
    parser.add_argument(
        "--work-ms", type=float, default=2.0, help="work per record, ms (default 2)"
    )
    parser.add_argument(
        "--auto-commit-interval-ms", type=int, default=1000, help="auto-commit timer (default 1000)"
    )


def crash_after(records: int, batch: int) -> int:
    """About 40% in, in the middle of a batch (batches start at multiples of `batch`)."""
    return (records * 2 // 5) // batch * batch + batch // 2


async def run_from_args(
    settings: Settings, workspace: LabWorkspace, args: argparse.Namespace
) -> list[Table]:
    records = int(args.records)
    deadline = 60 + len(STRATEGIES) * (20 + records * (float(args.work_ms) + 3) / 1000)
    async with within(settings.kafka, "orders lab offsets", deadline):
        topic = await workspace.create_topic("exercise3", 1)
        await fill(settings.kafka, topic, records, 1)
        with tempfile.TemporaryDirectory(prefix="orders-lab-offsets-") as logs:
            rows = [
                await crash_and_restart(settings, workspace, topic, strategy, args, Path(logs))
                for strategy in STRATEGIES
            ]
    return [
        Table(
            title=f"orders lab offsets: Exercise 3, a consumer killed -9 mid-batch ({records} "
            f"records, batches of {args.batch})",
            claim=CLAIM,
            columns=COLUMNS,
            rows=[row for row, _ in rows],
            notes=[note for _, note in rows] + NOTES,
        )
    ]


async def crash_and_restart(
    settings: Settings,
    workspace: LabWorkspace,
    topic: str,
    strategy: CommitStrategy,
    args: argparse.Namespace,
    logs: Path,
) -> tuple[dict[str, Cell], str]:
    """Run the strategy's consumer until it is killed mid-batch, then again to the end."""
    out = logs / f"{strategy}.processed"
    member = ["--topic", topic, "--group", workspace.group(f"offsets-{strategy}")]
    member += ["--strategy", strategy, "--out", str(out), "--batch", str(args.batch)]
    member += ["--work-ms", str(args.work_ms)]
    member += ["--auto-commit-interval-ms", str(args.auto_commit_interval_ms)]
    first_run = [*member, "--crash-after", str(crash_after(args.records, args.batch))]
    module = "app.lab.offsets.member"
    async with lab_child(settings, module, first_run, logs, f"{strategy}-1") as first:
        crash = fields(await first.line("mid-batch", "done", timeout=STEP_S))
        first.kill()
        await first.wait()
    async with lab_child(settings, module, member, logs, f"{strategy}-2") as second:
        restart = fields(await second.line("started", timeout=STEP_S))
        done = fields(await second.line("done", timeout=STEP_S))

    counted = count_processed((int(line) for line in out.read_text().split()), args.records)
    killed = int(crash["offset"]) if "offset" in crash else None
    restarted = int(restart["position"])
    explicit = int(crash.get("commits", 0)) + int(done["commits"])
    row: dict[str, Cell] = {
        "strategy": strategy,
        "records": counted.records,
        "processed": counted.processed,
        "redelivered": counted.redelivered,
        "lost": counted.lost,
        "commits": None if strategy.startswith("auto") else explicit,
        "killed after": killed,
        "restarted at": restarted,
        "records/s": int(done["processed"]) / max(float(done["seconds"]), 1e-3),
    }
    if killed is None:
        return row, f"{strategy}: the run reached the end before a kill point (not killed)."
    since = killed + 1 - restarted  # processed after the committed offset the restart used
    if since > 0:
        why = f"{since} processed after the last commit ({restarted}): redelivered"
    else:
        why = f"the commit ({restarted}) was {-since} past what was processed: never processed"
    return row, (
        f"{strategy}: killed after processing offset {killed} "
        f"(record {int(crash['index']) + 1} of a batch from {crash['batch_start']}); "
        f"restart at {restarted}: {why} (the case shown: {KILL_CASE[strategy]})."
    )


NOTES = [
    "killed after: the kill point is chosen per row (offsets/rules.py, kill_here), the first point "
    "past --crash-after that shows the row's case: for auto_commit, the timer's last commit "
    "predates the batch by half an interval (the average crash); for auto_commit_ahead, the "
    "timer has committed the batch in hand; for the manual rows, any mid-batch point (their "
    "commits are the application's own).",
    "auto_commit vs auto_commit_ahead: aiokafka's timer commits in the background the position "
    "getmany has reached, processed or not; a crash redelivers what was processed since its "
    "last commit if that commit predates the batch in hand, and loses the rest of the batch if "
    "the timer fired while it was being processed (Java's consumer commits in poll(), so with "
    "processing inside the poll loop it only ever redelivers).",
    "commits: the explicit commits of both runs (auto-commit's timer is not counted: about one "
    "per interval); each is awaited, the course's sync commit (aiokafka's commit() is a "
    "coroutine; an async commit is the same call left running as a task).",
    "records/s: the restarted run, from its first record to the end of the topic, the per-record "
    "work included: the difference between strategies is the commits' cost.",
]

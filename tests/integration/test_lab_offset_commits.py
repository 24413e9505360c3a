"""`orders lab offsets`, a short run on the real broker: what each commit strategy redelivers or
loses when its consumer is killed -9 in the middle of a batch."""

from __future__ import annotations

import argparse

from app.lab.offsets import add_arguments, run_from_args
from app.lab.report import Cell
from app.lab.workspace import lab_workspace
from app.settings import KafkaSettings, Settings
from tests.integration.endpoints import Endpoints

RECORDS = 1000
BATCH = 40


def number(cell: Cell) -> int:
    assert isinstance(cell, int)
    return cell


async def test_each_commit_strategy_redelivers_or_loses_what_the_course_says(
    endpoints: Endpoints,
) -> None:
    settings = Settings(kafka=KafkaSettings(bootstrap_servers=endpoints.kafka_bootstrap))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    # A shorter timer than the lab's, so that the auto-commit kills land within 1000 records.
    options = ["--records", str(RECORDS), "--batch", str(BATCH), "--auto-commit-interval-ms", "500"]
    async with lab_workspace(settings) as workspace:
        [table] = await run_from_args(settings, workspace, parser.parse_args(options))

    for row in table.rows:
        assert row["killed after"] is not None, row  # every consumer was killed mid-run
        assert number(row["processed"]) == RECORDS - number(row["lost"]) + number(
            row["redelivered"]
        )
    auto = table.row("strategy", "auto_commit")
    assert number(auto["redelivered"]) > 0
    assert auto["lost"] == 0
    ahead = table.row("strategy", "auto_commit_ahead")  # the timer committed the batch in hand
    assert number(ahead["lost"]) > 0
    assert ahead["redelivered"] == 0
    after_batch = table.row("strategy", "manual_after_batch")
    assert after_batch["lost"] == 0
    assert 0 < number(after_batch["redelivered"]) <= BATCH
    per_record = table.row("strategy", "manual_per_record")
    assert per_record["lost"] == 0
    assert number(per_record["redelivered"]) <= 1
    # One commit per record: the killed one's never happened, its redelivery's did.
    assert per_record["commits"] == RECORDS
    before_batch = table.row("strategy", "manual_before_batch")
    assert before_batch["redelivered"] == 0
    assert 0 < number(before_batch["lost"]) < BATCH

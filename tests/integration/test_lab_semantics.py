"""`orders lab semantics`, a short run: the course's delivery guarantees hold, and break, as the
course says, under real faults (kill -9 mid-batch, lost produce answers, a broker restart of
the lab's own broker, a zombie), on the real broker and PostgreSQL.

One run (about a minute) for the module; each test reads one shape of its outcome.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from app.errors import OrdersError
from app.lab.semantics import Options, SemanticsOutcome, lab_broker, run_semantics
from app.lab.semantics.results import semantics_table
from app.lab.workspace import lab_workspace
from tests.integration.conftest import make_settings
from tests.integration.endpoints import Endpoints

# The lab's own broker for this module, on ports of its own (below the ephemeral range, as
# tests/integration/throwaway.py explains), never the shared one.
LAB_BROKER_PORT = 19892

SHORT = Options(
    events=2500,
    keys=20,
    rate=500,
    kill_every_s=1.0,
    lost_acks_every=10,
    broker_restart=True,
    max_records=100,
    latency_events=100,
    latency_rate=200,
    burst=400,
    deadline_s=150,
    broker_port=LAB_BROKER_PORT,
)


@pytest.fixture(scope="module")
async def outcome(
    endpoints: Endpoints, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SemanticsOutcome]:
    settings = make_settings(endpoints, database_url)
    options = Options(**{**SHORT.__dict__, "broker_home": tmp_path_factory.mktemp("lab-kafka")})
    async with lab_workspace(settings) as workspace:
        yield await run_semantics(settings, workspace, options)


def test_at_most_once_loses_some_and_doubles_none(outcome: SemanticsOutcome) -> None:
    run = outcome.faulted["at-most-once"]
    assert run.kills >= 1
    assert run.tally.lost > 0
    # Losses from committing before processing (not only sends acks=0 never got into the
    # topic): a member committing after processing would lose none of these.
    assert run.tally.lost - run.never_in_log > 0
    assert run.tally.duplicated == 0


def test_at_least_once_doubles_some_and_loses_none(outcome: SemanticsOutcome) -> None:
    run = outcome.faulted["at-least-once"]
    assert run.tally.duplicated > 0
    assert run.tally.lost == 0
    # Both of its ways to double: a request appended twice (its answer lost), and records
    # stored again after a kill -9 between store and commit.
    assert run.doubled_in_log > 0
    assert run.tally.duplicated > run.doubled_in_log


@pytest.mark.parametrize("mode", ["exactly-once-postgres", "exactly-once-kafka"])
def test_both_exactly_once_modes_lose_double_and_reorder_nothing(
    outcome: SemanticsOutcome, mode: str
) -> None:
    run = outcome.faulted[mode]
    assert run.kills >= 1
    assert run.lost_acks > 0
    assert run.tally.acknowledged == run.tally.sent
    assert (run.tally.lost, run.tally.duplicated, run.tally.out_of_order) == (0, 0, 0)
    assert run.doubled_in_log == 0  # the idempotent producer absorbed every resent request


@pytest.mark.parametrize("mode", ["exactly-once-postgres", "exactly-once-kafka"])
def test_the_zombie_is_fenced_and_none_of_its_writes_is_visible(
    outcome: SemanticsOutcome, mode: str
) -> None:
    run = outcome.faulted[mode]
    assert run.zombie is not None
    assert run.zombie.fenced, run.zombie
    assert run.zombie_writes_visible == 0


def test_the_broker_restart_hit_the_run(outcome: SemanticsOutcome) -> None:
    assert outcome.broker_restarted
    assert f"127.0.0.1:{LAB_BROKER_PORT}" in outcome.broker
    with pytest.raises(ConnectionRefusedError):  # and the lab's broker is stopped after it
        socket.create_connection(("127.0.0.1", LAB_BROKER_PORT), timeout=1).close()


def test_every_mode_has_its_cost_measured_without_faults(outcome: SemanticsOutcome) -> None:
    for mode, cost in outcome.costs.items():
        assert cost.orders_per_s is not None
        assert cost.orders_per_s > 0, mode
        assert cost.p50_ms is not None
        assert cost.p99_ms is not None
        assert 0 < cost.p50_ms <= cost.p99_ms, mode
        assert (cost.tally.lost, cost.tally.duplicated, cost.tally.out_of_order) == (0, 0, 0)


def test_the_table_has_a_row_per_mode_with_raw_numbers(outcome: SemanticsOutcome) -> None:
    table = semantics_table(SHORT, outcome)
    assert table.column("mode") == list(outcome.faulted)
    row = table.row("mode", "exactly-once-kafka")
    assert row["lost"] == 0
    assert row["zombie_fenced"] is True
    assert table.row("mode", "at-least-once")["zombie_fenced"] is None
    assert "kill -9" in str(row["faults"])


async def test_the_runs_rows_are_removed_after_it(
    outcome: SemanticsOutcome, database_url: str
) -> None:
    connection = await asyncpg.connect(database_url.replace("+asyncpg", "", 1))
    try:
        for table in ("lab_deliveries", "lab_positions"):
            left = await connection.fetchval(
                f"SELECT count(*) FROM {table} WHERE run_id = ANY($1)", outcome.run_ids
            )
            assert left == 0, table
    finally:
        await connection.close()
    assert outcome.run_ids


def test_the_broker_restart_needs_a_source_checkout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(lab_broker, "SERVICES", tmp_path / "scripts" / "services.py")
    monkeypatch.setattr(lab_broker, "ROOT", tmp_path)
    with pytest.raises(OrdersError, match="--no-broker-restart"):
        lab_broker.LabBroker()


def test_a_second_run_cannot_take_the_lab_broker(tmp_path: Path) -> None:
    first = lab_broker.LabBroker(tmp_path, LAB_BROKER_PORT)
    first._take_lock()
    try:
        with pytest.raises(OrdersError, match=f"in use by another lab run \\(pid {os.getpid()}"):
            lab_broker.LabBroker(tmp_path, LAB_BROKER_PORT)._take_lock()
    finally:
        assert first._lock is not None
        first._lock.close()
    again = lab_broker.LabBroker(tmp_path, LAB_BROKER_PORT)
    again._take_lock()  # free again once released
    assert again._lock is not None
    again._lock.close()


@pytest.fixture
def stale_broker() -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in for a broker a killed lab run left behind: a live process."""
    stale = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield stale
    stale.kill()
    stale.wait()


async def test_a_broker_left_by_a_killed_run_is_stopped_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stale_broker: subprocess.Popen[bytes]
) -> None:
    broker = lab_broker.LabBroker(tmp_path, LAB_BROKER_PORT)
    # Reaped once it ends, as services.py does for a broker it started (else a zombie process
    # would look alive to its pid check).
    sys.modules["local_services.processes"].adopt(stale_broker)
    pid_file = tmp_path / "node-1" / "broker.pid"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(str(stale_broker.pid))
    started: list[bool] = []

    async def start() -> None:  # the real start needs Java; what matters is what ran before
        started.append(stale_broker.poll() is not None)

    monkeypatch.setattr(broker, "start", start)
    try:
        await broker.open()
        assert started == [True]  # the stale one had ended when the start began
        assert not pid_file.exists()
    finally:
        await broker.close()

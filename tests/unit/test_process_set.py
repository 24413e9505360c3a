"""`orders api --workers N`: the directory the parent prepares for its processes, what each
process makes of it, the command line, and what uvicorn hands each process (pickled)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from uvicorn.config import Config

from app.api.http_server import WORKER_APP, SettingsEdgeProtocol
from app.api.process_set import WORKERS, prepared_for, shared_dir
from app.api.rate_limit import POLICY, SERVICE_POLICY, table_file
from app.api.readiness_board import ReportBoard
from app.cli import build_parser
from app.errors import ConfigurationError
from app.observability import MULTIPROCESS_DIR
from app.observability.dir_lock import LOCK_FILE, hold_multiprocess_dir
from app.settings import ApiSettings

ROOT = Path(__file__).resolve().parents[2]
ORDERS = Path(sys.executable).with_name("orders")


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """prepared_for sets both variables: put them back as they were afterwards (a delenv of an
    unset variable alone would record nothing to undo)."""
    for variable in (MULTIPROCESS_DIR, WORKERS):
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)


def test_a_private_directory_is_made_handed_on_and_removed() -> None:
    with prepared_for(3) as directory:
        assert directory.is_dir()
        assert Path(os.environ[MULTIPROCESS_DIR]) == directory
        assert os.environ[WORKERS] == "3"
        for policy in (POLICY, SERVICE_POLICY):
            assert table_file(directory, policy).stat().st_size > 0
        assert shared_dir(ApiSettings(workers=3)) == directory
    assert not directory.exists()


def test_the_operators_directory_is_emptied_of_the_last_run_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROCESS_DIR, str(tmp_path))
    (tmp_path / "counter_123.db").write_bytes(b"old counts")
    ReportBoard(tmp_path, pid=123).publish(True)
    stale_table = table_file(tmp_path, POLICY)
    stale_table.write_bytes(b"x" * 10)
    with prepared_for(2) as directory:
        assert directory == tmp_path
        assert os.environ[MULTIPROCESS_DIR] == str(tmp_path)
        assert not (tmp_path / "counter_123.db").exists()
        assert ReportBoard(tmp_path).reports() == []
        assert stale_table.read_bytes().count(0) == stale_table.stat().st_size  # all empty
    assert tmp_path.is_dir()


def test_one_process_shares_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert shared_dir(ApiSettings(workers=2)) is None  # no parent prepared a directory
    monkeypatch.setenv(MULTIPROCESS_DIR, str(tmp_path))
    assert shared_dir(ApiSettings(workers=1)) is None  # metrics in files, nothing else
    assert shared_dir(ApiSettings(workers=2)) == tmp_path


def test_the_command_line_takes_1_to_64_processes() -> None:
    parser = build_parser()
    assert parser.parse_args(["api", "--workers", "4"]).workers == 4
    assert parser.parse_args(["api"]).workers is None  # API_WORKERS decides
    for wrong in ("0", "65", "two"):
        with pytest.raises(SystemExit):
            parser.parse_args(["api", "--workers", wrong])


def test_what_uvicorn_hands_each_process_survives_pickling() -> None:
    """uvicorn starts each process with "spawn": its Config, protocol class included, is pickled
    (a functools.partial holding one process's limits and timer would not do)."""
    config = Config(WORKER_APP, factory=True, workers=2, http=SettingsEdgeProtocol)
    copy = pickle.loads(pickle.dumps(config))
    assert copy.http is SettingsEdgeProtocol
    assert copy.app == WORKER_APP


HOLDER = """
import sys, time
from app.observability.dir_lock import hold_multiprocess_dir
with hold_multiprocess_dir(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def running_set(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding `tmp_path` as a running `orders api --workers N` parent does."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    ) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        try:
            yield holder
        finally:
            holder.kill()


def test_a_directory_in_use_by_another_set_is_refused_until_its_parent_dies(
    tmp_path: Path, running_set: subprocess.Popen[str]
) -> None:
    with (
        pytest.raises(ConfigurationError, match=f"in use by .* \\(pid {running_set.pid}\\)"),
        hold_multiprocess_dir(tmp_path),
    ):
        pass
    running_set.send_signal(signal.SIGKILL)  # no clean-up: the kernel drops its lock
    running_set.wait(timeout=10)
    with (
        hold_multiprocess_dir(tmp_path),
        pytest.raises(ConfigurationError),
        hold_multiprocess_dir(tmp_path),
    ):
        pass  # a second holder, in the same process too, is refused
    with hold_multiprocess_dir(tmp_path):  # released on the way out
        pass


def test_a_second_orders_api_exits_2_and_touches_nothing(
    tmp_path: Path, running_set: subprocess.Popen[str]
) -> None:
    """Before it prepares the directory (which would empty the running set's metric files and
    bucket tables), and before it imports the app (which makes its own metric files there)."""
    (tmp_path / "counter_1.db").write_bytes(b"the running set's counts")
    env = {**os.environ, MULTIPROCESS_DIR: str(tmp_path), "API_PORT": "1"}
    done = subprocess.run(
        [str(ORDERS), "api", "--workers", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "in use by another `orders api --workers`" in done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == [LOCK_FILE, "counter_1.db"]
    assert (tmp_path / "counter_1.db").read_bytes() == b"the running set's counts"

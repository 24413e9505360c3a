"""The directory the API processes of one host share (`orders api --workers N`, N > 1).

One directory holds what the processes must agree on: prometheus-client's files (their metrics,
added up by whichever one is scraped: app/observability/exposition.py), the rate limits' bucket
tables (app/api/rate_limit.py) and their readiness reports (app/api/readiness_board.py). The
parent prepares it before the processes start and passes it on in PROMETHEUS_MULTIPROC_DIR,
and API_WORKERS=N, so that each process (a fresh interpreter, from multiprocessing's "spawn")
knows from its settings that it is one of a set. One process (N == 1) uses none of it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from app.api.rate_limit import create_tables
from app.api.readiness_board import ReportBoard
from app.observability.exposition import (
    MULTIPROCESS_DIR,
    multiprocess_dir,
    prepare_multiprocess_dir,
)
from app.settings import ApiSettings

WORKERS = "API_WORKERS"


def shared_dir(api: ApiSettings) -> Path | None:
    """The directory this process shares with its siblings; None when it is the only one: with
    API_WORKERS=1, or when no `orders api` parent prepared one (an app made in a test, say,
    under a developer's API_WORKERS=2)."""
    directory = multiprocess_dir()
    if api.workers == 1 or directory is None:
        return None
    return Path(directory)


@contextlib.contextmanager
def prepared_for(workers: int) -> Iterator[Path]:
    """In the parent, before its `workers` processes start: the shared directory, emptied of
    an earlier run's files, in the environment they inherit. PROMETHEUS_MULTIPROC_DIR if the
    operator set one (kept afterwards; the caller holds its lock, app/observability/dir_lock.py,
    so that no other set is using it), else a private temporary one (removed afterwards)."""
    configured = multiprocess_dir()
    directory = Path(configured or tempfile.mkdtemp(prefix="orders-api-"))
    try:
        prepare_multiprocess_dir(directory)
        create_tables(directory)
        ReportBoard.clear(directory)
        os.environ[MULTIPROCESS_DIR] = str(directory)
        os.environ[WORKERS] = str(workers)
        yield directory
    finally:
        if configured is None:
            shutil.rmtree(directory, ignore_errors=True)

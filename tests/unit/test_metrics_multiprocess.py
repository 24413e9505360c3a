"""Several API processes, one PROMETHEUS_MULTIPROC_DIR: a scrape of any one shows the sums.

Real processes (each a fresh interpreter, as uvicorn's workers are), serving requests through
the API's own app; no services needed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from app.observability import MULTIPROCESS_DIR, prepare_multiprocess_dir

ROOT = Path(__file__).resolve().parents[2]

# argv: requests to serve, then what to do: "crash" (exit without a word), "live" (wait for a
# line on stdin, then leave as the lifespan does), "scrape" (print GET /metrics).
API_PROCESS = """
import asyncio, os, sys
import httpx
from app.api import create_app
from app.api.metrics import ProducerMetrics
from app.observability import mark_process_dead
from app.settings import load_settings

async def main(requests: int, then: str) -> None:
    transport = httpx.ASGITransport(app=create_app(load_settings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
        for _ in range(requests):
            assert (await client.get("/healthz")).status_code == 200
        if then == "scrape":
            print((await client.get("/metrics")).text)
            return
    ProducerMetrics("orders").connected(True)
    if then == "crash":
        os._exit(0)
    print("ready", flush=True)
    sys.stdin.readline()
    mark_process_dead()

asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
"""


def api_process(directory: Path, requests: int, then: str) -> subprocess.Popen[str]:
    env = {**os.environ, MULTIPROCESS_DIR: str(directory), "METRICS_ENABLED": "true"}
    return subprocess.Popen(
        [sys.executable, "-c", API_PROCESS, str(requests), then],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def scrape(directory: Path) -> str:
    with api_process(directory, 0, "scrape") as process:
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    return out


def sample(text: str, series: str) -> float:
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert found, f"{series} not in the scrape"
    return float(found.group(1))


HEALTHZ = 'orders_http_requests_total{route="/healthz",status="200"}'


def test_a_scrape_of_any_process_adds_up_every_process(tmp_path: Path) -> None:
    directory = prepare_multiprocess_dir(tmp_path / "metrics")
    with api_process(directory, 3, "crash") as crashed:
        crashed.communicate(timeout=60)
    with api_process(directory, 5, "live") as live:
        assert live.stdout is not None
        assert live.stdout.readline().strip() == "ready"

        text = scrape(directory)
        assert sample(text, HEALTHZ) == 8  # 3 + 5: the dead process's counts stay
        assert sample(text, 'orders_http_request_duration_seconds_count{route="/healthz"}') == 8
        # Live gauges: the crashed process's file is dropped, the live one's counts.
        assert sample(text, "orders_producer_connected") == 1
        assert sample(text, "orders_http_requests_in_flight") == 1  # the scrape itself

        live.communicate("\n", timeout=60)
    assert (crashed.returncode, live.returncode) == (0, 0)
    text = scrape(directory)
    assert sample(text, HEALTHZ) == 8
    assert sample(text, 'orders_http_requests_total{route="/metrics",status="200"}') == 1
    assert sample(text, "orders_producer_connected") == 0


def test_the_variable_set_after_prometheus_client_was_imported_stops_the_start(
    tmp_path: Path,
) -> None:
    late = (
        "import os, prometheus_client\n"
        f"os.environ[{MULTIPROCESS_DIR!r}] = {str(tmp_path)!r}\n"
        "from app.api import create_app\n"
        "from app.settings import load_settings\n"
        "create_app(load_settings())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != MULTIPROCESS_DIR}
    failed = subprocess.run(
        [sys.executable, "-c", late], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert failed.returncode != 0
    assert "must be set before prometheus_client is imported" in failed.stderr


def test_preparing_the_directory_empties_an_earlier_runs_files(tmp_path: Path) -> None:
    stale = tmp_path / "counter_123.db"
    stale.write_bytes(b"old")
    prepare_multiprocess_dir(tmp_path)
    assert not stale.exists()

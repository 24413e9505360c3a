"""`orders api` as two processes on one port (API_WORKERS=2), against the real broker and
PostgreSQL: both serve; a scrape of either adds up both; a customer's burst is one burst across
both; /readyz answers for the set (one process frozen: 503 from the other); a process killed is
replaced; SIGTERM drains both (every order answered 202 is on the topic).

Which process answered is told from the outside, exposing nothing new: the processes are the
parent's `spawn_main` children (psutil), each reports its readiness in the shared directory
(PROMETHEUS_MULTIPROC_DIR, set here as an operator would), and prometheus-client keeps one
counter file per process there."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from prometheus_client.multiprocess import MultiProcessCollector

from app.api.readiness_board import ReportBoard
from app.api.readiness_rule import READY_INTERVAL_S, STALE_AFTER_S
from app.contract import decode
from app.settings import Settings
from tests.integration.api_client import bearer, order_body, token_for
from tests.integration.kafka_tools import read_topic
from tests.integration.live_stack import free_port
from tests.integration.processes import OrdersProcess
from tests.integration.waiting import eventually

BURST = 6
ORDERS = "/orders"
# How long the readiness test may wait for the 503 once a process is frozen: it comes within
# STALE_AFTER_S plus a report interval and the probe cache (~3-4 s) on a machine at rest.
FROZEN_FOR_AT_MOST_S = 20.0


@dataclass
class ApiSet:
    process: OrdersProcess
    port: int
    shared: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def members(self) -> list[int]:
        """The API processes: the parent's children started by multiprocessing's spawn (not its
        resource tracker)."""
        children = psutil.Process(self.process.pid).children()
        return sorted(
            child.pid
            for child in children
            if child.is_running()
            and child.status() != psutil.STATUS_ZOMBIE
            and "spawn_main" in " ".join(child.cmdline())
        )

    def reporting(self) -> list[int]:
        return sorted(report.pid for report in ReportBoard(self.shared).reports())

    def answered(self, pid: int, status: str) -> float:
        """POST /orders answers of `status` by process `pid`, from its own counter file."""
        path = self.shared / f"counter_{pid}.db"
        if not path.exists():
            return 0.0
        total = 0.0
        for metric in MultiProcessCollector.merge([str(path)]):  # type: ignore[no-untyped-call]
            for sample in metric.samples:
                if (
                    sample.name == "orders_http_requests_total"
                    and sample.labels.get("route") == ORDERS
                    and sample.labels.get("status") == status
                ):
                    total += sample.value
        return total

    def client(self) -> httpx.AsyncClient:
        """Every request on a connection of its own: the kernel hands each to either process."""
        return httpx.AsyncClient(
            base_url=self.base_url,
            timeout=10.0,
            limits=httpx.Limits(max_keepalive_connections=0),
        )


@asynccontextmanager
async def api_set(settings: Settings, tmp_path: Path) -> AsyncIterator[ApiSet]:
    shared = tmp_path / "shared"
    port = free_port()
    process = OrdersProcess(
        "api",
        settings,
        tmp_path / "logs",
        API_HOST="127.0.0.1",
        API_PORT=str(port),
        API_WORKERS="2",
        PROMETHEUS_MULTIPROC_DIR=str(shared),
        # A customer's token gets BURST orders, and (near enough) never one more in a test.
        API_RATE_LIMIT_PER_S="0.001",
        API_RATE_LIMIT_BURST=str(BURST),
        # uvicorn's supervisor kills a process that does not answer its ping for this long (5 s
        # by default): far longer here, so that the frozen process of the readiness test is
        # still the one frozen when the other answers 503, however loaded the machine.
        API_WORKERS_HEALTHCHECK_TIMEOUT_S=str(FROZEN_FOR_AT_MOST_S + 30),
    )
    running = ApiSet(process, port, shared)
    try:
        await until_both_ready(running)
        yield running
    finally:
        process.stop()


async def until_both_ready(running: ApiSet, timeout: float = 60.0) -> None:
    """Both processes up and reporting, and the set ready."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with running.client() as client:
        while loop.time() < deadline:
            assert running.process.alive(), running.process.output()
            members = running.members()
            if len(members) == 2 and running.reporting() == members:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/readyz")).status_code == 200:
                        return
            await asyncio.sleep(0.2)
    msg = f"two API processes did not get ready\n{running.process.output()[-4000:]}"
    raise AssertionError(msg)


async def post_orders(
    client: httpx.AsyncClient, count: int, headers: dict[str, str], customer: str = "c-1"
) -> list[httpx.Response]:
    """`count` orders, 8 at a time (so that both processes are accepting at once)."""
    gate = asyncio.Semaphore(8)

    async def one(n: int) -> httpx.Response:
        async with gate:
            return await client.post(ORDERS, json=order_body(customer, n), headers=headers)

    return list(await asyncio.gather(*(one(n) for n in range(count))))


def sample(text: str, series: str) -> float:
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert found, f"{series} not in the scrape"
    return float(found.group(1))


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return response.text


def accepted_total(text: str) -> float:
    return sample(text, f'orders_http_requests_total{{route="{ORDERS}",status="202"}}')


def total(text: str, metric: str) -> float:
    """The sum of a metric's series (every label set)."""
    found = re.findall(rf"^{re.escape(metric)}{{[^}}]*}} (\S+)$", text, re.MULTILINE)
    return sum(float(value) for value in found)


async def test_two_processes_share_metrics_rate_limits_and_readiness(
    settings: Settings, tmp_path: Path
) -> None:
    async with api_set(settings, tmp_path) as running, running.client() as client:
        first, second = running.members()
        service = bearer(token_for(settings))  # a service's token: no rate limit here

        # Orders over fresh connections until both processes have answered some.
        accepted = 0
        while accepted < 400 and not all(running.answered(pid, "202") for pid in (first, second)):
            answers = await post_orders(client, 20, service)
            assert {answer.status_code for answer in answers} == {202}
            accepted += len(answers)
        assert running.answered(first, "202") > 0
        assert running.answered(second, "202") > 0
        assert running.answered(first, "202") + running.answered(second, "202") == accepted

        # Whichever process answers a scrape, it shows both: K accepted, 2 producers, no order
        # in flight.
        # (A process renders at most once a second: app/api/metrics.py RenderedRecently.)
        await asyncio.sleep(1.1)
        for _ in range(6):
            text = await scrape(client)
            assert accepted_total(text) == accepted
            assert total(text, "orders_producer_records_total") == accepted
            assert sample(text, "orders_producer_connected") == 2
            assert sample(text, "orders_http_requests_in_flight") == 1  # the scrape rendering it

        # A customer's burst is one burst across both processes, not one each.
        customer = bearer(token_for(settings, subject="shopper-1", customer="c-1"))
        statuses = [answer.status_code for answer in await post_orders(client, 3 * BURST, customer)]
        while not (running.answered(first, "429") and running.answered(second, "429")):
            assert len(statuses) < 300, "the refusals all came from one process"
            statuses += [a.status_code for a in await post_orders(client, 10, customer)]
        assert statuses.count(202) == BURST, statuses
        assert set(statuses) == {202, 429}

        # /readyz answers for the set: one process frozen stops reporting, and the other one
        # answers 503 once its report is older than STALE_AFTER_S (the supervisor, told to wait
        # longer than this test does, does not replace the frozen one meanwhile).
        assert (await client.get("/readyz")).status_code == 200
        os.kill(first, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            refused = False
            while not refused and time.monotonic() - frozen_at < FROZEN_FOR_AT_MOST_S:
                refused = (await client.get("/readyz")).status_code == 503
                await asyncio.sleep(0.1)
            waited = time.monotonic() - frozen_at
            assert first in running.members()  # the same process, not a replacement
        finally:
            os.kill(first, signal.SIGCONT)
        assert refused, f"still ready {waited:.1f} s after one process froze"
        # Its last report, up to one interval before it froze, had to grow stale first.
        assert waited > STALE_AFTER_S - READY_INTERVAL_S, f"503 {waited:.1f} s after: not stale"
        assert await eventually_ready(client, timeout=30)


async def eventually_ready(client: httpx.AsyncClient, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if (await client.get("/readyz")).status_code == 200:
                return True
        await asyncio.sleep(0.2)
    return False


async def test_a_killed_process_is_replaced_and_sigterm_drains_every_accepted_order(
    settings: Settings, tmp_path: Path
) -> None:
    service = bearer(token_for(settings))
    async with api_set(settings, tmp_path) as running, running.client() as client:
        killed, kept = running.members()
        answers = await post_orders(client, 40, service)
        assert {answer.status_code for answer in answers} == {202}

        # kill -9: uvicorn starts another; the killed one's counts stay in the sums, its live
        # gauges leave them (or "producers connected" would say 3).
        os.kill(killed, signal.SIGKILL)
        assert await eventually(lambda: len(running.members()) == 2, timeout=30)
        replacement = next(pid for pid in running.members() if pid != kept)
        assert replacement != killed
        assert await eventually(lambda: replacement in running.reporting(), timeout=30)
        assert await eventually_ready(client, timeout=30)
        # The dead one's report is deleted by the survivors' next report (every second).
        assert await eventually(lambda: killed not in running.reporting(), timeout=15)
        await asyncio.sleep(1.1)  # past the answering process's render cache
        for _ in range(4):
            text = await scrape(client)
            assert accepted_total(text) == 40
            assert sample(text, "orders_producer_connected") == 2
        assert not (running.shared / f"gauge_livesum_{killed}.db").exists()
        more = await post_orders(client, 20, service)
        assert {answer.status_code for answer in more} == {202}

        # SIGTERM to the parent under load: each process drains (flushes its producer).
        members = running.members()
        accepted: list[httpx.Response] = [*answers, *more]
        stop = asyncio.Event()

        async def load() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    answer = await client.post(ORDERS, json=order_body("c-2", n), headers=service)
                except httpx.TransportError:  # the port closing: not accepted
                    await asyncio.sleep(0.05)
                    continue
                if answer.status_code == 202:
                    accepted.append(answer)

        loaders = [asyncio.create_task(load()) for _ in range(6)]
        await asyncio.sleep(1.0)
        started = time.monotonic()
        running.process.signal(signal.SIGTERM)
        code = await asyncio.to_thread(running.process.wait, 60)
        stopped_in = time.monotonic() - started
        stop.set()
        await asyncio.gather(*loaders)
    assert code == 0, running.process.output()[-3000:]
    assert stopped_in < 30
    assert not any(psutil.pid_exists(pid) for pid in members)
    assert running.process.output().count("Application shutdown complete") >= 2
    on_topic = {
        (record.partition, record.offset): decode(record.value).order_id
        for record in await read_topic(
            settings.kafka.bootstrap_servers, settings.kafka.orders_topic
        )
    }
    for answer in accepted:
        body = answer.json()
        assert str(on_topic[(body["partition"], body["offset"])]) == body["order_id"]


async def test_processes_whose_parent_was_killed_drain_and_exit(
    settings: Settings, tmp_path: Path
) -> None:
    """kill -9 of the supervisor: nothing would replace or stop its processes, serving alone."""
    async with api_set(settings, tmp_path) as running:
        members = running.members()
        running.process.kill()
        assert await eventually(
            lambda: not any(psutil.pid_exists(pid) for pid in members), timeout=30
        ), running.process.output()[-3000:]
        assert running.process.output().count("Application shutdown complete") == 2

"""The in-flight cap, around an app whose requests wait until released."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from app.api.edge_guard import InFlightCap


class Held:
    """Answers 200 once `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def request(app: Any, path: str = "/orders") -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    await app(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


async def test_requests_over_the_cap_get_503_at_once_and_the_probes_never() -> None:
    held = Held()
    cap = InFlightCap(held, max_in_flight=3, retry_after_s=4)
    waiting = [asyncio.create_task(request(cap)) for _ in range(3)]
    await asyncio.sleep(0)
    assert cap.in_flight == 3

    status, headers, body = await asyncio.wait_for(request(cap), 1)
    assert status == 503
    assert headers[b"retry-after"] == b"4"
    assert headers[b"content-type"] == b"application/problem+json"
    assert json.loads(body)["status"] == 503

    probes = [asyncio.create_task(request(cap, path)) for path in ("/healthz", "/readyz")]
    await asyncio.sleep(0)
    assert not any(probe.done() for probe in probes)  # let through, waiting like the others

    held.release.set()
    assert [status for status, _, _ in await asyncio.gather(*waiting, *probes)] == [200] * 5
    assert cap.in_flight == 0
    assert (await request(cap))[0] == 200


async def test_a_failing_request_gives_its_place_back() -> None:
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    cap = InFlightCap(failing, max_in_flight=1, retry_after_s=1)
    for _ in range(3):
        with contextlib.suppress(RuntimeError):
            await request(cap)
    assert cap.in_flight == 0

"""The payment gateway's client: one charge call, bounded, with its failure classified.

aiohttp, not httpx (which the tests use): measured on this machine against `orders gateway`,
httpx's client spent 1.6 ms of CPU per call at 8 connections and 8 ms at 256, aiohttp 0.2 ms:
with hundreds of charges in flight, httpx alone capped a member below partition-at-a-time.

`is_retriable` is the one place that decides what is retried: no answer (the timeout, a refused
or reset connection, a reply aiohttp could not parse) and 408/429/5xx are retriable; any other
4xx is final (409: the charge key was used for another charge; 422: a body the gateway cannot
read), as is a 2xx whose body is not a charge (a gateway bug: a deterministic failure retried
forever would be a stall).
A retry is always safe because it carries the same charge key: a timed-out call may have
charged, and the gateway answers the retry with that first charge (`replayed: true`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import ValidationError

from app.errors import OrdersError
from app.payments.charges import Charge, ChargeRequest


class GatewayError(OrdersError):
    """A charge call that did not return a charge; `retriable` says whether to call again."""

    def __init__(self, message: str, *, retriable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.status = status


def is_retriable(failure: int | BaseException) -> bool:
    """An HTTP status other than 200/201, or what the call raised: may calling again succeed?"""
    if isinstance(failure, int):
        return failure in (408, 429) or failure >= 500
    if isinstance(failure, aiohttp.ClientResponseError):
        # charge() never calls raise_for_status: aiohttp raises this itself when it cannot parse
        # the reply (a gateway restarting mid-answer), saying 400 with the parser's error as the
        # cause. Only a status the gateway really sent can make a failure final.
        garbled = isinstance(failure.__cause__, HttpProcessingError)
        return garbled or not 400 <= failure.status < 500 or is_retriable(failure.status)
    # TimeoutError: our own overall bound; ClientConnectionError: refused and reset connections,
    # a server gone mid-answer; ClientPayloadError: an answer cut short.
    retriable = TimeoutError | aiohttp.ClientConnectionError | aiohttp.ClientPayloadError
    return isinstance(failure, retriable)


class GatewayClient:
    """`async with GatewayClient(url, timeout_s) as client: await client.charge(request)`."""

    def __init__(self, base_url: str, timeout_s: float, max_connections: int = 256) -> None:
        self._base_url = base_url
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> GatewayClient:
        # As many connections as calls in flight: a call waiting for a pooled connection would
        # spend its timeout in the queue.
        self._http = aiohttp.ClientSession(
            self._base_url,
            connector=aiohttp.TCPConnector(limit=self._max_connections),
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
        )
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def charge(self, request: ChargeRequest) -> Charge:
        """One call, bounded by the timeout as a whole; raises GatewayError."""
        if self._http is None:
            msg = "GatewayClient used outside `async with`"
            raise RuntimeError(msg)
        try:
            async with (
                asyncio.timeout(self._timeout_s),
                self._http.post(
                    "/charges", data=request.model_dump_json(), headers=_JSON
                ) as response,
            ):
                status, body = response.status, await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            msg = f"charge {request.charge_key}: no answer ({exc!r})"
            raise GatewayError(msg, retriable=is_retriable(exc)) from exc
        if status not in (200, 201):
            text = body[:200].decode(errors="replace")
            msg = f"charge {request.charge_key}: gateway answered {status}: {text}"
            raise GatewayError(msg, retriable=is_retriable(status), status=status)
        try:
            return Charge.model_validate_json(body)
        except ValidationError as exc:
            msg = f"charge {request.charge_key}: the gateway's answer is not a charge: {exc}"
            raise GatewayError(msg, retriable=False, status=status) from exc


_JSON = {"content-type": "application/json"}


# 2**60 times any sensible initial delay is past any max_s: a larger exponent changes nothing
# but would overflow the float (attempt ~1025) in a loop that retries for as long as it must.
_MAX_EXPONENT = 60


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential back-off with full jitter before retry number `attempt` (1, 2, ...)."""
    exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
    return rng.uniform(0, min(max_s, initial_s * 2**exponent))


Outcome = Charge | GatewayError
Settled = Literal["charged", "replayed", "refused"]


@dataclass(frozen=True)
class ChargeResult:
    """How a charge settled: `final` is the charge (charged now, or `replayed`: an earlier call
    charged) or a final error (409, 422, a 2xx that is not a charge); `attempts` calls made."""

    request: ChargeRequest
    final: Outcome
    attempts: int

    @property
    def charge(self) -> Charge | None:
        return self.final if isinstance(self.final, Charge) else None

    @property
    def refusal(self) -> GatewayError | None:
        return self.final if isinstance(self.final, GatewayError) else None

    @property
    def outcome(self) -> Settled:
        if isinstance(self.final, GatewayError):
            return "refused"
        return "replayed" if self.final.replayed else "charged"


async def settle_charge(
    client: GatewayClient,
    request: ChargeRequest,
    *,
    backoff_initial_s: float,
    backoff_max_s: float,
    before_attempt: Callable[[int], Awaitable[None]] | None = None,
    after_attempt: Callable[[int, Outcome], Awaitable[None]] | None = None,
    rng: random.Random | None = None,
) -> ChargeResult:
    """The one retry loop: call until a charge or a final error, backing off between retriable
    failures; the same charge key every time, so this never charges twice. A final error is a
    result (`refused`), not a raise. `before_attempt(n)` runs before call n (the audit trail
    commits its `started` row there: an attempt cut off by kill -9 is still on record),
    `after_attempt(n, outcome)` after it; a hook's exception ends the loop. Retries for as long
    as failures are retriable: bound it from outside (asyncio.timeout) where that must end."""
    draws = rng if rng is not None else random.Random()
    attempt = 0
    while True:
        attempt += 1
        if before_attempt is not None:
            await before_attempt(attempt)
        outcome: Outcome
        try:
            outcome = await client.charge(request)
        except GatewayError as exc:
            outcome = exc
        if after_attempt is not None:
            await after_attempt(attempt, outcome)
        if isinstance(outcome, Charge) or not outcome.retriable:
            return ChargeResult(request, outcome, attempt)
        await asyncio.sleep(backoff_delay(attempt, backoff_initial_s, backoff_max_s, draws))


async def charge_until_final(
    client: GatewayClient,
    request: ChargeRequest,
    *,
    backoff_initial_s: float,
    backoff_max_s: float,
    on_attempt: Callable[[int, Outcome], None] | None = None,
    before_attempt: Callable[[int], Awaitable[None]] | None = None,
    after_attempt: Callable[[int, Outcome], Awaitable[None]] | None = None,
    rng: random.Random | None = None,
) -> Charge:
    """`settle_charge` for callers that treat a refusal as an error: returns the charge, raises
    the final GatewayError. `on_attempt(n, outcome)` sees every attempt (after `after_attempt`)."""

    async def after(attempt: int, outcome: Outcome) -> None:
        if after_attempt is not None:
            await after_attempt(attempt, outcome)
        if on_attempt is not None:
            on_attempt(attempt, outcome)

    result = await settle_charge(
        client,
        request,
        backoff_initial_s=backoff_initial_s,
        backoff_max_s=backoff_max_s,
        before_attempt=before_attempt,
        after_attempt=after,
        rng=rng,
    )
    if isinstance(result.final, GatewayError):
        raise result.final
    return result.final

"""Per-client rate limits: one token bucket per client, shared by the API processes of a host.

Two policies: a customer's token (one that carries a customer_id) acts for one customer, and
gets API_RATE_LIMIT_PER_S / API_RATE_LIMIT_BURST; a service's or an operator's token (no
customer) places orders for every customer, and gets the far larger API_SERVICE_RATE_LIMIT_PER_S
/ API_SERVICE_RATE_LIMIT_BURST, so a shop's backend is not throttled at one customer's rate.

One API process keeps its buckets in memory (RateLimiter: the cheapest); several on one host
(`orders api --workers N`) share them in a memory-mapped table (SharedRateLimiter,
app/api/shared_buckets.py), so N processes still let a client through at the configured rate.
The limit is per host: hosts behind a balancer each have their own buckets. No lock in memory:
each process runs one event loop, and `admit` never awaits.

Refusals carry the IETF RateLimit fields as in draft-ietf-httpapi-ratelimit-headers-10 (the
structured-field syntax unchanged since -08): `RateLimit-Policy: "<policy>";q=<burst>;w=<seconds
to refill the whole burst>` and `RateLimit: "<policy>";r=<remaining>;t=<seconds until full>`,
the policy "client" for customers' tokens and "service" for the others.
The draft models a quota per window; a token bucket of `burst` refilled in `w` seconds is the
closest such policy (it never lets more than q through at once, and is whole again after w).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from starlette.requests import Request

from app.api.shared_buckets import BucketTable
from app.auth import Principal
from app.errors import OrdersError
from app.settings import ApiSettings

POLICY = "client"
SERVICE_POLICY = "service"
# At most this many clients' buckets are kept (~150 bytes each). Reaching it drops the buckets
# that are full again (idle clients: forgetting them changes nothing), then, if that is not
# enough, the oldest half, so a flood of distinct clients costs bounded memory and amortised
# O(1) per new client. A dropped bucket comes back full: only ever more lenient, never stricter.
MAX_CLIENTS = 10_000


class RateLimitedError(OrdersError):
    """A client spent its burst; it may retry after `retry_after_s` seconds."""

    retriable = True

    def __init__(self, retry_after_s: int, headers: dict[str, str]) -> None:
        super().__init__(f"rate limit reached; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s
        self.headers = headers


class RateLimiter:
    """Token buckets keyed by client. `rate_per_s == 0` or `burst == 0` disables the limit.

    `services`, if given, is the limiter of the tokens without a customer (`admit` picks it);
    without it, every token draws from this one."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        policy: str = POLICY,
        services: RateLimiter | None = None,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.services = services
        self.name = policy
        self.enabled = rate_per_s > 0 and burst > 0
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_clients = max_clients
        self.clock = clock
        # client -> [tokens, last refill instant]; a list, not an object: cheapest to update.
        self.buckets: dict[str, list[float]] = {}
        window = math.ceil(burst / rate_per_s) if self.enabled else 0
        self.policy = f'"{policy}";q={burst};w={window}'

    @classmethod
    def from_settings(cls, api: ApiSettings, shared: Path | None = None) -> RateLimiter:
        """Customers' tokens' limiter, holding the services' one: in this process's memory, or
        in the tables of the directory `shared` by the API processes (`create_tables`)."""
        if shared is not None:
            return SharedRateLimiter.in_directory(api, shared)
        services = cls(
            api.service_rate_limit_per_s, api.service_rate_limit_burst, policy=SERVICE_POLICY
        )
        return cls(api.rate_limit_per_s, api.rate_limit_burst, services=services)

    def take(self, client: str) -> None:
        """Spend one token of `client`'s bucket, or raise RateLimitedError when it is empty."""
        if not self.enabled:
            return
        now = self.clock()
        bucket = self.buckets.get(client)
        if bucket is None:
            if len(self.buckets) >= self.max_clients:
                self._shrink(now)
            self.buckets[client] = [self.burst - 1.0, now]
            return
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return
        bucket[0] = tokens
        raise self._refusal(tokens)

    def _refusal(self, tokens: float) -> RateLimitedError:
        retry_after = max(1, math.ceil((1.0 - tokens) / self.rate))
        until_full = max(1, math.ceil((self.burst - tokens) / self.rate))
        headers = {
            "Retry-After": str(retry_after),
            "RateLimit-Policy": self.policy,
            "RateLimit": f'"{self.name}";r=0;t={until_full}',
        }
        return RateLimitedError(retry_after, headers)

    def _shrink(self, now: float) -> None:
        burst, rate = self.burst, self.rate
        self.buckets = {
            client: bucket
            for client, bucket in self.buckets.items()
            if bucket[0] + (now - bucket[1]) * rate < burst
        }
        excess = len(self.buckets) - self.max_clients // 2
        if excess > 0:
            # dicts keep insertion order: the first ones are the clients first seen longest ago.
            for client in list(self.buckets)[:excess]:
                del self.buckets[client]


class SharedRateLimiter(RateLimiter):
    """The same buckets and answers, kept in a table every API process of the host maps."""

    def __init__(
        self,
        table_path: Path,
        rate_per_s: float,
        burst: int,
        *,
        policy: str = POLICY,
        services: RateLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(rate_per_s, burst, policy=policy, services=services, clock=clock)
        self.table = (
            BucketTable(table_path, rate_per_s, burst, clock=clock) if self.enabled else None
        )

    @classmethod
    def in_directory(cls, api: ApiSettings, directory: Path) -> SharedRateLimiter:
        services = cls(
            table_file(directory, SERVICE_POLICY),
            api.service_rate_limit_per_s,
            api.service_rate_limit_burst,
            policy=SERVICE_POLICY,
        )
        return cls(
            table_file(directory, POLICY),
            api.rate_limit_per_s,
            api.rate_limit_burst,
            services=services,
        )

    def take(self, client: str) -> None:
        if self.table is None:
            return
        tokens = self.table.spend(client)
        if tokens is not None:
            raise self._refusal(tokens)


def table_file(directory: Path, policy: str) -> Path:
    """Where a policy's shared buckets are (not `*.db`: those are prometheus-client's)."""
    return directory / f"rate-limit-{policy}.buckets"


def create_tables(directory: Path) -> None:
    """Make both policies' tables, empty: once, before any API process starts."""
    for policy in (POLICY, SERVICE_POLICY):
        BucketTable.create(table_file(directory, policy))


def admit(request: Request, principal: Principal) -> None:
    """Take one token from the principal's client's bucket, under the customers' or the
    services' policy (whether it has a customer); raise RateLimitedError (429 with Retry-After
    and RateLimit fields, app/api/problems.py) when it is empty."""
    limiter: RateLimiter = request.app.state.rate_limiter
    if principal.customer is None and limiter.services is not None:
        limiter = limiter.services
    limiter.take(principal.client_key)

"""Token bucket arithmetic with an injected clock; the table of buckets stays bounded."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from starlette.requests import Request

from app.api.rate_limit import RateLimitedError, RateLimiter, admit
from app.auth import SCOPES, Principal
from app.settings import ApiSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spend(limiter: RateLimiter, client: str, times: int) -> int:
    """How many of `times` requests were admitted."""
    admitted = 0
    for _ in range(times):
        try:
            limiter.take(client)
        except RateLimitedError:
            continue
        admitted += 1
    return admitted


def test_a_new_client_gets_its_burst_then_is_refused() -> None:
    limiter = RateLimiter(10, 20, clock=Clock())
    assert spend(limiter, "a", 25) == 20


def test_tokens_come_back_at_the_rate_up_to_the_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(10, 20, clock=clock)
    spend(limiter, "a", 20)
    clock.now += 0.5  # 5 tokens
    assert spend(limiter, "a", 10) == 5
    clock.now += 3600  # never more than the burst
    assert spend(limiter, "a", 30) == 20


def test_clients_have_buckets_of_their_own() -> None:
    limiter = RateLimiter(1, 2, clock=Clock())
    assert spend(limiter, "a", 5) == 2
    assert spend(limiter, "b", 5) == 2


def test_a_refusal_says_when_to_retry_and_the_policy() -> None:
    clock = Clock()
    limiter = RateLimiter(4, 8, clock=clock)
    spend(limiter, "a", 8)
    clock.now += 0.1  # 0.4 of a token: the next one in 0.15 s, rounded up to a whole second
    with pytest.raises(RateLimitedError) as refused:
        limiter.take("a")
    headers = refused.value.headers
    assert headers["Retry-After"] == "1"
    assert headers["RateLimit-Policy"] == '"client";q=8;w=2'
    assert headers["RateLimit"] == '"client";r=0;t=2'  # 7.6 tokens to go at 4/s


def test_retry_after_is_whole_seconds_until_a_token() -> None:
    clock = Clock()
    limiter = RateLimiter(0.25, 1, clock=clock)  # one token every 4 s
    limiter.take("a")
    clock.now += 1
    with pytest.raises(RateLimitedError) as refused:
        limiter.take("a")
    assert refused.value.retry_after_s == 3
    clock.now += 3
    limiter.take("a")


def test_refused_requests_spend_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(1, 1, clock=clock)
    limiter.take("a")
    assert spend(limiter, "a", 100) == 0
    clock.now += 1
    limiter.take("a")


@pytest.mark.parametrize(("rate", "burst"), [(0, 10), (10, 0)])
def test_zero_disables_the_limit(rate: float, burst: int) -> None:
    limiter = RateLimiter(rate, burst, clock=Clock())
    assert spend(limiter, "a", 1000) == 1000
    assert limiter.buckets == {}


def test_idle_clients_are_forgotten_when_the_table_is_full() -> None:
    clock = Clock()
    limiter = RateLimiter(10, 10, max_clients=100, clock=clock)
    for index in range(100):
        limiter.take(f"idle-{index}")
    clock.now += 1  # every bucket full again: nothing to remember
    limiter.take("busy")
    spend(limiter, "busy", 10)
    assert list(limiter.buckets) == ["busy"]
    with pytest.raises(RateLimitedError):  # forgetting the idle ones did not refill "busy"
        limiter.take("busy")


def test_a_flood_of_distinct_clients_keeps_the_table_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(1, 10, max_clients=100, clock=clock)
    for index in range(10_000):
        limiter.take(f"client-{index}")  # none of them idle long enough to be full again
        assert len(limiter.buckets) <= 100
    # The newest clients are the ones kept.
    assert "client-9999" in limiter.buckets
    assert "client-0" not in limiter.buckets


def request_to(limiter: RateLimiter) -> Request:
    app = SimpleNamespace(state=SimpleNamespace(rate_limiter=limiter))
    return Request({"type": "http", "headers": [], "app": app})


def admitted(request: Request, principal: Principal, times: int) -> int:
    count = 0
    for _ in range(times):
        try:
            admit(request, principal)
        except RateLimitedError:
            continue
        count += 1
    return count


CUSTOMER = Principal("alice", "web-shop", "issuer", frozenset(SCOPES), customer="c-1")
SERVICE = Principal("backend", "backend", "issuer", frozenset(SCOPES))


def test_a_customer_token_and_a_service_token_have_limits_of_their_own() -> None:
    """A service acts for every customer: it is not held to one customer's rate."""
    clock = Clock()
    services = RateLimiter(100, 40, policy="service", clock=clock)
    request = request_to(RateLimiter(1, 4, services=services, clock=clock))
    assert admitted(request, CUSTOMER, 10) == 4
    assert admitted(request, SERVICE, 100) == 40
    with pytest.raises(RateLimitedError) as refused:
        admit(request, SERVICE)
    assert refused.value.headers["RateLimit-Policy"] == '"service";q=40;w=1'
    assert refused.value.headers["RateLimit"].startswith('"service";r=0;')
    with pytest.raises(RateLimitedError) as refused:
        admit(request, CUSTOMER)
    assert refused.value.headers["RateLimit-Policy"] == '"client";q=4;w=4'


def test_the_default_limits_are_far_higher_for_services(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")  # no .env
    limiter = RateLimiter.from_settings(ApiSettings())
    assert (limiter.rate, limiter.burst, limiter.name) == (100, 200, "client")
    assert limiter.services is not None
    services = limiter.services
    assert (services.rate, services.burst, services.name) == (2000, 4000, "service")
    request = request_to(limiter)
    assert admitted(request, CUSTOMER, 201) == 200
    assert admitted(request, SERVICE, 4000) == 4000


def test_zero_disables_the_service_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")  # no .env
    monkeypatch.setenv("API_SERVICE_RATE_LIMIT_PER_S", "0")
    limiter = RateLimiter.from_settings(ApiSettings())
    assert limiter.services is not None
    assert not limiter.services.enabled
    assert admitted(request_to(limiter), SERVICE, 10_000) == 10_000

"""Token bucket arithmetic with an injected clock; the table of buckets stays bounded."""

from __future__ import annotations

import pytest

from app.api.rate_limit import RateLimitedError, RateLimiter


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

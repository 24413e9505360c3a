"""The edge limits' settings: documented defaults, and values that cannot work refused at start."""

from __future__ import annotations

import pytest

from app.api.edge_protocol import EdgeLimits
from app.errors import ConfigurationError
from app.settings import ApiSettings, load_settings


def test_the_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")  # no .env
    api = ApiSettings()
    assert api.max_header_bytes == 16 * 1024
    assert api.max_headers == 100
    assert (api.head_timeout_s, api.body_timeout_s, api.keep_alive_timeout_s) == (10, 10, 5)
    assert (api.max_connections, api.max_in_flight) == (1024, 512)
    assert (api.rate_limit_per_s, api.rate_limit_burst) == (100, 200)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("API_HEAD_TIMEOUT_S", "0"),
        ("API_BODY_TIMEOUT_S", "-1"),
        ("API_KEEP_ALIVE_TIMEOUT_S", "0"),
        ("API_MAX_HEADER_BYTES", "100"),  # a bearer token alone is larger
        ("API_MAX_HEADERS", "0"),
        ("API_MAX_CONNECTIONS", "0"),
        ("API_MAX_IN_FLIGHT", "0"),
        ("API_BACKLOG", "0"),
        ("API_RATE_LIMIT_PER_S", "-1"),
        ("API_RATE_LIMIT_BURST", "many"),
    ],
)
def test_a_limit_that_cannot_work_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable):
        load_settings()


@pytest.mark.parametrize(
    ("head_s", "body_s", "tick_s"),
    [(10, 10, 1.0), (2, 3, 0.4), (0.1, 10, 0.05)],
)
def test_deadlines_are_checked_often_enough_for_the_shortest_timeout(
    head_s: float, body_s: float, tick_s: float
) -> None:
    limits = EdgeLimits.from_settings(ApiSettings(head_timeout_s=head_s, body_timeout_s=body_s))
    assert limits.tick_s == pytest.approx(tick_s)

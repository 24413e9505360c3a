"""The HTTP side of authentication (app/api/authn.py, app/api/problems.py), without services."""

from __future__ import annotations

import pytest
from fastapi import APIRouter
from starlette.requests import Request

from app.api.authn import BearerRoute, bearer, bearer_token, required_scope
from app.api.problems import bearer_challenge
from app.auth import MissingTokenError, TokenRefusedError


def request_with(*authorization: bytes) -> Request:
    headers = [(b"host", b"orders")] + [(b"authorization", value) for value in authorization]
    return Request({"type": "http", "headers": headers})


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER"])
def test_the_scheme_is_case_insensitive(scheme: bytes) -> None:
    assert bearer_token(request_with(scheme + b" abc.def.ghi ")) == "abc.def.ghi"


@pytest.mark.parametrize("authorization", [(), (b"Basic dXNlcjpwYXNz",)])
def test_no_bearer_token_is_a_missing_token(authorization: tuple[bytes, ...]) -> None:
    with pytest.raises(MissingTokenError):
        bearer_token(request_with(*authorization))


def test_an_empty_or_repeated_token_is_refused() -> None:
    for empty in (b"Bearer", b"Bearer    "):
        with pytest.raises(TokenRefusedError, match="empty"):
            bearer_token(request_with(empty))
    with pytest.raises(TokenRefusedError, match="one Authorization"):
        bearer_token(request_with(b"Bearer a.b.c", b"Bearer d.e.f"))


def test_the_challenges_are_rfc_6750s() -> None:
    assert bearer_challenge() == 'Bearer realm="orders"'
    assert bearer_challenge("invalid_token", "the token has expired") == (
        'Bearer realm="orders", error="invalid_token", error_description="the token has expired"'
    )
    assert bearer_challenge("insufficient_scope", "needs it", "orders:read").endswith(
        ', scope="orders:read"'
    )


def test_a_bearer_route_must_declare_a_known_scope() -> None:
    assert required_scope(bearer("orders:read")) == "orders:read"
    router = APIRouter(route_class=BearerRoute)

    async def endpoint() -> None:
        return None

    with pytest.raises(TypeError, match="needs openapi_extra"):
        router.add_api_route("/open", endpoint)  # fails closed: no route without a scope
    with pytest.raises(TypeError, match="unknown scope"):
        router.add_api_route("/typo", endpoint, openapi_extra=bearer("orders:wirte"))

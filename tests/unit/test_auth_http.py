"""The HTTP side of authentication (app/api/authn.py, app/api/problems.py), without services."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from starlette.requests import Request

from app.api.authn import BearerRoute, bearer, bearer_token, required_scope
from app.api.problems import bearer_challenge, install_problem_handlers
from app.auth import InvalidRequestError, KeysUnavailableError, MissingTokenError


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


def test_an_empty_or_repeated_token_is_a_malformed_request() -> None:
    for empty in (b"Bearer", b"Bearer    "):
        with pytest.raises(InvalidRequestError, match="empty"):
            bearer_token(request_with(empty))
    with pytest.raises(InvalidRequestError, match="one Authorization"):
        bearer_token(request_with(b"Bearer a.b.c", b"Bearer d.e.f"))
    with pytest.raises(InvalidRequestError, match="one Authorization"):
        bearer_token(request_with(b"Bearer a.b.c", b"Basic dXNlcjpwYXNz"))


async def answer_to(error: Exception) -> httpx.Response:
    """The problem the app's handlers make of `error`, raised by a route."""
    app = FastAPI()
    install_problem_handlers(app, retry_after_s=2)

    @app.get("/raise")
    async def raising() -> None:
        raise error

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
        return await client.get("/raise")


async def test_a_malformed_authorization_is_400_invalid_request() -> None:
    """RFC 6750 section 3.1: invalid_request is 400, not the 401 of invalid_token."""
    answer = await answer_to(InvalidRequestError("send one Authorization header"))
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["www-authenticate"] == 'Bearer realm="orders", error="invalid_request"'
    assert answer.json()["detail"] == "send one Authorization header"


async def test_unavailable_keys_say_so_without_naming_the_jwks() -> None:
    url = "https://issuer.internal.example/.well-known/jwks.json"
    answer = await answer_to(KeysUnavailableError(f"the JWKS at {url} did not answer"))
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "2"
    assert answer.json()["detail"] == "the keys that verify tokens are unavailable now; retry later"
    assert "issuer.internal" not in answer.text


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

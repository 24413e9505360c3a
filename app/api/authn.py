"""Who is asking: each request's bearer token, checked before the route reads anything of it.

Every route of the orders and customers routers is a BearerRoute: it declares the scope it
needs once, in its OpenAPI entry (`openapi_extra=bearer(WRITE)`), and the same declaration is
enforced here, so the docs cannot drift from the checks; a route that declares none fails at
import. The check runs before FastAPI reads parameters or the body, so a request without a
token is 401 whatever is wrong with its parameters or its body's content (RFC 6750 section 3).

Not before everything, though: what can be told from the request's head alone is refused
first, token or not, at no cost and revealing nothing: the HTTP edge's 431/408
(app/api/edge_protocol.py), the in-flight cap's 503 (app/api/edge_guard.py), and a declared body
that is not JSON (415) or too large (413, app/api/guard.py). Then here, in this order: the
Authorization header's form (400 invalid_request), the token (401), the scope (403), the
client's rate limit (429); only then does the route read its parameters and body (400/422).

POST /orders is the hot path: this is a plain call in the route's handler, not a FastAPI
dependency (app/api/orders.py says why), and a token seen before costs a dict lookup
(app/auth/verifier.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response

from app.api.json_body import JsonBodyRoute
from app.api.rate_limit import admit
from app.auth import (
    SCOPES,
    InsufficientScopeError,
    InvalidRequestError,
    MissingTokenError,
    Principal,
    TokenRules,
    TokenVerifier,
    key_set,
)
from app.settings import AuthSettings

log = logging.getLogger(__name__)

SCHEME = "bearerAuth"
PRINCIPAL = "orders.principal"  # where the request's principal is kept, in its ASGI scope

# AUTH_ENABLED=false: every request acts as this one client, with every scope.
ANONYMOUS = Principal(
    subject="anonymous", client_id="anonymous", issuer="auth-disabled", scopes=frozenset(SCOPES)
)


class Authenticator:
    """The principal of each request; `verifier` None means authentication is off."""

    def __init__(self, verifier: TokenVerifier | None) -> None:
        self.verifier = verifier

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> Authenticator:
        if not settings.enabled:
            return cls(None)
        rules = TokenRules(settings.issuer, settings.audience, settings.leeway_s)
        return cls(TokenVerifier(key_set(settings), rules, settings.token_cache_size))

    async def start(self) -> None:
        if self.verifier is None:
            log.warning(
                "AUTH_ENABLED=false: authentication is OFF; every request acts as one anonymous "
                "client with every scope, for any customer"
            )
            return
        await self.verifier.start()

    async def authenticate(self, request: Request, scope: str) -> Principal:
        """The principal, allowed `scope` and within its rate limit; kept in the request."""
        if self.verifier is None:
            principal = ANONYMOUS
        else:
            principal = await self.verifier.principal(bearer_token(request))
        if scope not in principal.scopes:
            raise InsufficientScopeError(scope)
        admit(request, principal)
        request.scope[PRINCIPAL] = principal
        return principal


def bearer_token(request: Request) -> str:
    """The token of the request's `Authorization: Bearer` header (RFC 6750 section 2.1).
    A repeated header or an empty token is a malformed request (400 invalid_request, section
    3.1), not a bad token."""
    found = [value for name, value in request.scope["headers"] if name == b"authorization"]
    if not found:
        raise MissingTokenError
    if len(found) > 1:
        msg = "send one Authorization header"
        raise InvalidRequestError(msg)
    value: bytes = found[0]
    scheme, _, token = value.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer":  # another scheme carries no bearer token: a bare challenge
        raise MissingTokenError
    token = token.strip()
    if not token:
        msg = "the bearer token is empty"
        raise InvalidRequestError(msg)
    return token


def authenticator_of(request: Request) -> Authenticator:
    authenticator: Authenticator = request.app.state.resources.authenticator
    return authenticator


def principal_of(request: Request) -> Principal:
    """The principal BearerRoute found for this request."""
    principal: Principal = request.scope[PRINCIPAL]
    return principal


# `async def`: FastAPI would run a plain `def` dependency in a thread (see app/api/deps.py).
async def get_principal(request: Request) -> Principal:
    return principal_of(request)


def bearer(scope: str) -> dict[str, Any]:
    """A route's OpenAPI security requirement, which BearerRoute also enforces."""
    return {"security": [{SCHEME: [scope]}]}


def required_scope(openapi_extra: dict[str, Any] | None) -> str:
    try:
        [requirement] = (openapi_extra or {})["security"]
        [scope] = requirement[SCHEME]
    except (KeyError, ValueError) as exc:
        msg = "a BearerRoute needs openapi_extra=bearer(<scope>)"
        raise TypeError(msg) from exc
    if scope not in SCOPES:
        msg = f"unknown scope {scope!r}"
        raise TypeError(msg)
    return str(scope)


class BearerRoute(JsonBodyRoute):
    """A route that authenticates (scope and rate limit too) before anything else runs."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        scope = required_scope(self.openapi_extra)

        async def authenticated(request: Request) -> Response:
            await authenticator_of(request).authenticate(request, scope)
            return await handler(request)

        return authenticated


def document_bearer_scheme(app: FastAPI) -> None:
    """Add the bearer scheme to the OpenAPI document (Swagger UI's "Authorize" button)."""

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema.setdefault("components", {})["securitySchemes"] = {
                SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An OAuth 2.0 access token (JWT, RFC 9068) with the scopes "
                    f"each operation lists: {', '.join(SCOPES)}. For development: "
                    "`orders token --subject me --scope orders:write --scope orders:read`.",
                }
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

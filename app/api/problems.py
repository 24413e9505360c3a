"""The one place that turns errors into HTTP problem responses (RFC 9457)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.api.metrics import DATABASE_UNAVAILABLE, TOKEN_KEYS_UNAVAILABLE
from app.api.rate_limit import RateLimitedError
from app.api.schemas import Problem
from app.auth.errors import (
    AccessRefusedError,
    InsufficientScopeError,
    InvalidRequestError,
    KeysUnavailableError,
    MissingTokenError,
    TokenRefusedError,
)
from app.errors import (
    BrokerUnavailableError,
    DatabaseUnavailableError,
    IdempotencyKeyInFlightError,
    IdempotencyKeyReusedError,
    IntakeClosedError,
)

PROBLEM_JSON = "application/problem+json"


def problem(status: int, title: str, detail: str | None = None, **extra: Any) -> JSONResponse:
    body = Problem(title=title, status=status, detail=detail, errors=extra.pop("errors", None))
    return JSONResponse(
        jsonable_encoder(body, exclude_none=True),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=extra.pop("headers", None),
    )


def _printable(part: object) -> object:
    """A location or message part that can be written as UTF-8. A client's JSON may hold a lone
    surrogate ("\\ud800") anywhere, a member name too; pydantic blames the object holding such a
    name today, but one in `loc` would make the error response itself fail, a 500."""
    if isinstance(part, str):
        return part.encode("utf-8", "backslashreplace").decode("utf-8")
    return part


def problem_responses(
    *statuses: int, idempotency_key: bool = False
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem responses a route can give."""
    described = {
        400: "The body is not JSON, or not UTF-8; or the Authorization header is repeated, or "
        'its bearer token empty (WWW-Authenticate: error="invalid_request")',
        401: "No bearer token, or one that is not valid here (expired, another audience or "
        "issuer, an unknown key, not an access token); WWW-Authenticate says which (RFC 6750)",
        403: "The token lacks the scope this operation needs (WWW-Authenticate: "
        'error="insufficient_scope"), or acts for another customer',
        404: "Unknown, or accepted but not processed yet; to a customer's token, also another "
        "customer's order (never told apart from an unknown one)",
        409: "A request with this Idempotency-Key is still being answered; retry after "
        "Retry-After seconds",
        413: "Body larger than API_MAX_BODY_BYTES",
        415: "Content-Type is not application/json",
        422: "The body or a parameter is invalid; `errors` lists each field",
        429: "Rate limit reached (per client, per API process; a customer's token has a lower "
        "limit than a service's); retry after Retry-After seconds. RateLimit-Policy and "
        "RateLimit tell the quota",
        503: "Not accepted: a dependency did not answer in time, or intake is paused (the orders "
        "topic is being grown). Retry after Retry-After seconds, with the same Idempotency-Key",
    }
    if idempotency_key:
        described[422] += (
            "; or the Idempotency-Key was already used with a different body (`errors` names it)"
        )
    return {
        status: {
            "model": Problem,
            "description": described[status],
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


REALM = "orders"


def _not_counted(reason: str) -> None:
    return None


def bearer_challenge(error: str | None = None, description: str = "", scope: str = "") -> str:
    """A `WWW-Authenticate: Bearer` value (RFC 6750 section 3). The texts are the app's own
    (app/auth/errors.py), never a client's: nothing here needs quoting."""
    challenge = f'Bearer realm="{REALM}"'
    if error is not None:
        challenge += f', error="{error}"'
    if description:
        challenge += f', error_description="{description}"'
    if scope:
        challenge += f', scope="{scope}"'
    return challenge


def _refusal(exc: AccessRefusedError) -> JSONResponse:
    if isinstance(exc, MissingTokenError):
        challenge = {"WWW-Authenticate": bearer_challenge()}
        return problem(401, "Authentication required", str(exc), headers=challenge)
    if isinstance(exc, InvalidRequestError):  # RFC 6750 section 3.1: 400, no description
        challenge = {"WWW-Authenticate": bearer_challenge("invalid_request")}
        return problem(400, "Malformed Authorization header", str(exc), headers=challenge)
    if isinstance(exc, TokenRefusedError):
        challenge = {"WWW-Authenticate": bearer_challenge("invalid_token", str(exc))}
        return problem(401, "Invalid token", str(exc), headers=challenge)
    if isinstance(exc, InsufficientScopeError):
        value = bearer_challenge("insufficient_scope", str(exc), exc.scope)
        return problem(403, "Insufficient scope", str(exc), headers={"WWW-Authenticate": value})
    return problem(403, "Forbidden", str(exc))


def install_problem_handlers(
    app: FastAPI, retry_after_s: int, count_unavailable: Callable[[str], None] | None = None
) -> None:
    """`count_unavailable(reason)` is told of every 503 (app.api.metrics; None: not counted)."""
    count = count_unavailable or _not_counted

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "loc": [_printable(part) for part in error["loc"]],
                "msg": _printable(error["msg"]),
                "type": error["type"],
            }
            for error in exc.errors()
        ]
        if any(error["type"] == "json_invalid" for error in errors):
            return problem(400, "Malformed body", "the body is not valid JSON", errors=errors)
        return problem(422, "Invalid request", "see errors for each field", errors=errors)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return problem(exc.status_code, str(exc.detail), headers=exc.headers)

    retry_after = {"Retry-After": str(retry_after_s)}

    async def on_broker_unavailable(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BrokerUnavailableError)
        count(exc.reason)
        detail = f"{exc}. The order was not accepted; retry with the same Idempotency-Key."
        return problem(503, "Order not accepted", detail, headers=retry_after)

    async def on_intake_closed(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, IntakeClosedError)
        count(exc.reason)
        detail = f"{exc}. The order was not accepted; retry with the same Idempotency-Key."
        return problem(503, "Intake closed", detail, headers=retry_after)

    async def on_database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        count(DATABASE_UNAVAILABLE)
        return problem(503, "Database unavailable", str(exc), headers=retry_after)

    async def on_key_in_flight(request: Request, exc: Exception) -> JSONResponse:
        return problem(409, "Idempotency-Key in use", str(exc), headers=retry_after)

    async def on_key_reused(request: Request, exc: Exception) -> JSONResponse:
        errors = [
            {
                "loc": ["header", "Idempotency-Key"],
                "msg": str(exc),
                "type": "idempotency_key_reused",
            }
        ]
        return problem(422, "Idempotency-Key already used", str(exc), errors=errors)

    async def on_rate_limited(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RateLimitedError)
        return problem(429, "Too many requests", str(exc), headers=exc.headers)

    async def on_access_refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AccessRefusedError)
        return _refusal(exc)

    async def on_keys_unavailable(request: Request, exc: Exception) -> JSONResponse:
        count(TOKEN_KEYS_UNAVAILABLE)
        # Never the message: it names the JWKS URL, which app/auth/keys.py logs as it fails.
        detail = "the keys that verify tokens are unavailable now; retry later"
        return problem(503, "Token keys unavailable", detail, headers=retry_after)

    app.add_exception_handler(AccessRefusedError, on_access_refused)
    app.add_exception_handler(KeysUnavailableError, on_keys_unavailable)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(BrokerUnavailableError, on_broker_unavailable)
    app.add_exception_handler(IntakeClosedError, on_intake_closed)
    app.add_exception_handler(DatabaseUnavailableError, on_database_unavailable)
    app.add_exception_handler(IdempotencyKeyInFlightError, on_key_in_flight)
    app.add_exception_handler(IdempotencyKeyReusedError, on_key_reused)
    app.add_exception_handler(RateLimitedError, on_rate_limited)

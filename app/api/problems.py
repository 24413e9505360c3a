"""The one place that turns errors into HTTP problem responses (RFC 9457)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.api.schemas import Problem
from app.errors import BrokerUnavailableError, DatabaseUnavailableError

PROBLEM_JSON = "application/problem+json"


def problem(status: int, title: str, detail: str | None = None, **extra: Any) -> JSONResponse:
    body = Problem(title=title, status=status, detail=detail, errors=extra.pop("errors", None))
    return JSONResponse(
        jsonable_encoder(body, exclude_none=True),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=extra.pop("headers", None),
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem responses a route can give."""
    described = {
        404: "Unknown, or accepted but not processed yet",
        413: "Body larger than API_MAX_BODY_BYTES",
        415: "Content-Type is not application/json",
        422: "The body or a parameter is invalid; `errors` lists each field",
        503: "Not accepted: a dependency did not answer in time. Retry after Retry-After seconds, "
        "with the same Idempotency-Key",
    }
    return {
        status: {
            "model": Problem,
            "description": described[status],
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


def install_problem_handlers(app: FastAPI, retry_after_s: int) -> None:
    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}
            for error in exc.errors()
        ]
        return problem(422, "Invalid request", "see errors for each field", errors=errors)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return problem(exc.status_code, str(exc.detail), headers=exc.headers)

    retry_after = {"Retry-After": str(retry_after_s)}

    async def on_broker_unavailable(request: Request, exc: Exception) -> JSONResponse:
        detail = f"{exc}. The order was not accepted; retry with the same Idempotency-Key."
        return problem(503, "Order not accepted", detail, headers=retry_after)

    async def on_database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        return problem(503, "Database unavailable", str(exc), headers=retry_after)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(BrokerUnavailableError, on_broker_unavailable)
    app.add_exception_handler(DatabaseUnavailableError, on_database_unavailable)

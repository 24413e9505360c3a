"""Refuse a body that is not JSON (415) or is too large (413), before it is read into memory.

Only for a method and path the app declares: anything else is the router's to refuse (404, or
405 with Allow), so `PUT /orders` gets 405 whatever its Content-Type. The route is looked up only
before refusing (matching costs ~7 us a request; a well-formed POST never pays it).

Hand-written because the stock limiter (FastAPI's `max_body_size`) answers a declared oversize
body in plain text, replacing any response the app sends; clients here get problem+json for
every refusal. A declared Content-Length over the limit is refused before reading a byte; a
body that streams past the limit is cut off as it arrives, so at most the limit is ever held.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import problem

BODY_METHODS = {"POST", "PUT", "PATCH"}


class BodyTooLarge(HTTPException):
    """Raised from `receive`: FastAPI re-raises HTTPExceptions met while it reads the body."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, "Content Too Large")
        self.limit = limit


class RequestGuard:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            if not _declared(scope):
                await self.app(scope, receive, send)
                return
            refusal = problem(415, "Unsupported media type", "send Content-Type: application/json")
            await refusal(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            if not _declared(scope):
                await self.app(scope, receive, send)
                return
            await self._refuse_size(scope, receive, send)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse_size(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"the body may be at most {self.max_body_bytes} bytes"
        await problem(413, "Content Too Large", detail)(scope, receive, send)


def _declared(scope: Scope) -> bool:
    """Whether the app has a route for this method and path (Starlette sets scope["app"])."""
    return any(route.matches(scope)[0] is Match.FULL for route in scope["app"].router.routes)

"""Why a request was not let in; app/api/problems.py answers each as RFC 6750 says."""

from __future__ import annotations

from app.errors import OrdersError


class AccessRefusedError(OrdersError):
    """The request may not do this; retrying the same request cannot help."""


class MissingTokenError(AccessRefusedError):
    """No bearer token (401, a bare `WWW-Authenticate: Bearer` challenge)."""

    def __init__(self) -> None:
        super().__init__("this operation needs a bearer access token")


class InvalidRequestError(AccessRefusedError):
    """A malformed Authorization: repeated, or a Bearer scheme without a token (400,
    `error="invalid_request"`, RFC 6750 section 3.1)."""


class TokenRefusedError(AccessRefusedError):
    """A bearer token that is not valid here (401, `error="invalid_token"`).

    The message is one of a few fixed texts, never the token's content: it goes back to the
    client in a header and a body, and a token is attacker input.
    """


class InsufficientScopeError(AccessRefusedError):
    """A valid token without the scope the operation needs (403, `insufficient_scope`)."""

    def __init__(self, scope: str) -> None:
        super().__init__(f"this operation needs the {scope} scope")
        self.scope = scope


class OtherCustomerError(AccessRefusedError):
    """A customer's token used for another customer's orders (403)."""

    def __init__(self) -> None:
        super().__init__("this token acts for one customer only, not the one in this request")


class KeysUnavailableError(OrdersError):
    """The configured JWKS could not be fetched, so no token can be checked (503). The message
    names the JWKS URL: it is for the log, and the client is told only that keys are missing."""

    retriable = True

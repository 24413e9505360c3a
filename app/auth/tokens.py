"""What a bearer access token must be to be let in (RFC 9068's JWT profile), and who it names.

No I/O here: the key is handed in (app/auth/keys.py finds it by kid).

A token is accepted when all of these hold:
- its header says `typ: at+jwt` (or `application/at+jwt`): an OpenID Connect ID token, signed by
  the same issuer with the same keys, is not an access token (RFC 9068 section 4);
- its `alg` is the algorithm pinned for the key its `kid` names; `none` and HS* never are;
- the signature verifies; `iss` and `aud` are the configured ones (`aud` may be a list);
- `exp` is in the future and `nbf`/`iat` not, each within AUTH_LEEWAY_S of clock skew; each is
  a NumericDate (RFC 7519 section 2): a JSON number, finite as a float; a string, a boolean,
  10**400 or 1e400 (infinity) is refused, not converted;
- it carries every claim RFC 9068 requires: iss, exp, aud, sub, client_id, iat, jti.

Who acts (the Principal):
- `scope`, space-separated, says what the token may do: `orders:write` places (and validates)
  orders, `orders:read` reads them;
- a private claim `customer_id` makes it a customer's token: it acts for that customer only;
- without `customer_id` it is a service's or an operator's token: it acts for any customer.
  We chose a claim of its own over `sub` because a service's `sub` is not a customer id, and
  an issuer can add a claim without renaming its subjects.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt import PyJWK
from jwt.exceptions import (
    DecodeError,
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWTError,
)

from app.auth.errors import TokenRefusedError

WRITE = "orders:write"
READ = "orders:read"
SCOPES = (WRITE, READ)

ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
REQUIRED_CLAIMS = ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"]
ACCEPTED_ALGORITHMS = frozenset({"RS256", "ES256"})
# Far more than any issuer's access token; a header this big is refused before it is decoded.
MAX_TOKEN_LENGTH = 8192


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: the token's subject, for its client, within its scopes."""

    subject: str
    client_id: str
    issuer: str
    scopes: frozenset[str]
    customer: str | None = None  # None: a service or operator, acting for any customer
    client_key: str = field(init=False)

    def __post_init__(self) -> None:
        # The client, as rate limits and Idempotency-Keys see it: the subject is part of it, so
        # two customers signed in through the same client application never share either.
        key = json.dumps([self.issuer, self.client_id, self.subject], separators=(",", ":"))
        object.__setattr__(self, "client_key", key)

    def acts_for(self, customer_id: str) -> bool:
        return self.customer is None or self.customer == customer_id


@dataclass(frozen=True, slots=True)
class TokenRules:
    issuer: str
    audience: str
    leeway_s: float


def key_id(token: str) -> str:
    """The `kid` of a token whose header is acceptable (typ, alg); TokenRefusedError if not.
    Read before the signature is checked: it only chooses the key, which then decides."""
    if len(token) > MAX_TOKEN_LENGTH:
        msg = "the token is too long"
        raise TokenRefusedError(msg)
    try:
        header = jwt.get_unverified_header(token)
    except PyJWTError as exc:
        msg = "the token is not a well-formed JWT"
        raise TokenRefusedError(msg) from exc
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES:
        msg = "the token is not an access token (typ must be at+jwt)"
        raise TokenRefusedError(msg)
    if header.get("alg") not in ACCEPTED_ALGORITHMS:
        msg = "the token's algorithm is not accepted"
        raise TokenRefusedError(msg)
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        msg = "the token names no key (kid)"
        raise TokenRefusedError(msg)
    return kid


def verify(
    token: str, key: PyJWK, rules: TokenRules, now: float | None = None
) -> tuple[Principal, float]:
    """The token's principal and its expiry (Unix seconds); TokenRefusedError if it is not
    acceptable with this key (the one its kid names) at `now` (default: the clock)."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[key.algorithm_name],  # pinned by the key, whatever the token says
            audience=rules.audience,
            issuer=rules.issuer,
            # The times are checked below: PyJWT would take "9999999999" (a string) for a date.
            options={
                "require": REQUIRED_CLAIMS,
                "enforce_minimum_key_length": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except PyJWTError as exc:
        raise TokenRefusedError(_why(exc)) from exc
    expires = _check_times(claims, time.time() if now is None else now, rules.leeway_s)
    return principal_of(claims), expires


def numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """The claim as a NumericDate (None if absent); TokenRefusedError unless it is a JSON number
    (not a bool, not a string) that is finite as a float."""
    value = claims.get(name)
    if value is None:
        return None
    if type(value) is not int and type(value) is not float:  # bool is an int subclass: refused
        raise TokenRefusedError(_NOT_A_DATE)
    try:
        seconds = float(value)  # an int beyond 1.8e308 overflows
    except OverflowError:
        raise TokenRefusedError(_NOT_A_DATE) from None
    if not math.isfinite(seconds):
        raise TokenRefusedError(_NOT_A_DATE)
    return seconds


_NOT_A_DATE = "the token's exp, nbf and iat claims must be finite numbers (NumericDate)"


def _check_times(claims: dict[str, Any], now: float, leeway_s: float) -> float:
    """The expiry, once exp, nbf and iat are numbers and allow `now` (within the leeway)."""
    expires, not_before, issued = (numeric_date(claims, name) for name in ("exp", "nbf", "iat"))
    if expires is None:  # PyJWT checked every required claim is there: never so
        msg = "the token lacks the exp claim"
        raise TokenRefusedError(msg)
    if expires <= now - leeway_s:
        msg = "the token has expired"
        raise TokenRefusedError(msg)
    for instant in (not_before, issued):
        if instant is not None and instant > now + leeway_s:
            msg = "the token is not valid yet (nbf or iat in the future)"
            raise TokenRefusedError(msg)
    return expires


def principal_of(claims: dict[str, Any]) -> Principal:
    for name in ("sub", "client_id"):
        if not isinstance(claims[name], str) or not claims[name]:
            msg = f"the token's {name} claim must be a non-empty string"
            raise TokenRefusedError(msg)
    scope = claims.get("scope", "")
    customer = claims.get("customer_id")
    if not isinstance(scope, str):
        msg = "the token's scope claim must be a string"
        raise TokenRefusedError(msg)
    if customer is not None and (not isinstance(customer, str) or not customer):
        msg = "the token's customer_id claim must be a non-empty string"
        raise TokenRefusedError(msg)
    return Principal(
        subject=claims["sub"],
        client_id=claims["client_id"],
        issuer=claims["iss"],
        scopes=frozenset(scope.split()),
        customer=customer,
    )


# PyJWT's messages can quote the token (a kid, a claim's value): these fixed texts go back instead.
_WHY: list[tuple[type[PyJWTError], str]] = [
    (ExpiredSignatureError, "the token has expired"),
    (ImmatureSignatureError, "the token is not valid yet (nbf or iat in the future)"),
    (InvalidAudienceError, "the token is meant for another audience"),
    (InvalidIssuerError, "the token comes from another issuer"),
    (InvalidSignatureError, "the token's signature does not verify"),
    (InvalidAlgorithmError, "the token's algorithm is not the one of its key"),
    (DecodeError, "the token is not a well-formed JWT"),
]


def _why(exc: PyJWTError) -> str:
    if isinstance(exc, MissingRequiredClaimError) and exc.claim in REQUIRED_CLAIMS:
        return f"the token lacks the {exc.claim} claim"
    for kind, text in _WHY:
        if isinstance(exc, kind):
            return text
    return "the token is not valid"

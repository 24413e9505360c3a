"""Access tokens signed with the local development key, for `orders token`, tests and tools.

A real deployment gets its tokens from its identity provider; these have the same shape
(RFC 9068: `typ: at+jwt`, iss, aud, sub, client_id, iat, exp, jti, scope), so the API cannot
tell them apart from an issuer's.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from app.auth.local_key import local_signing_key, public_jwk
from app.auth.tokens import SCOPES
from app.settings import AuthSettings

DEFAULT_TTL_S = 3600
MAX_TTL_S = 7 * 24 * 3600


def mint(
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: str,
    audience: str,
    subject: str,
    scopes: Iterable[str],
    customer: str | None = None,
    client_id: str | None = None,
    ttl_s: int = DEFAULT_TTL_S,
    **claims: Any,
) -> str:
    """A signed access token; `claims` add to (or override) the standard ones."""
    scopes = tuple(scopes)
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        msg = f"unknown scope(s) {sorted(unknown)}; known: {', '.join(SCOPES)}"
        raise ValueError(msg)
    if not 0 < ttl_s <= MAX_TTL_S:
        msg = f"ttl must be 1 to {MAX_TTL_S} seconds"
        raise ValueError(msg)
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "client_id": client_id or subject,
        "iat": now,
        "exp": now + ttl_s,
        "jti": str(uuid.uuid4()),
        "scope": " ".join(scopes),
    }
    if customer is not None:
        payload["customer_id"] = customer
    payload.update(claims)
    headers = {"typ": "at+jwt", "kid": public_jwk(key)["kid"]}
    return jwt.encode(payload, key, algorithm="ES256", headers=headers)


def local_token(
    settings: AuthSettings,
    subject: str,
    scopes: Iterable[str] = SCOPES,
    *,
    customer: str | None = None,
    client_id: str | None = None,
    ttl_s: int = DEFAULT_TTL_S,
) -> str:
    """A token from the local key the settings name (created on first use), for their issuer
    and audience: what the API verifies when no JWKS is configured."""
    return mint(
        local_signing_key(settings.local_key_file),
        issuer=settings.issuer,
        audience=settings.audience,
        subject=subject,
        scopes=scopes,
        customer=customer,
        client_id=client_id,
        ttl_s=ttl_s,
    )

"""Bearer access tokens (OAuth 2.0, JWT per RFC 9068): keys, verification rules, minting."""

from app.auth.errors import (
    AccessRefusedError,
    InsufficientScopeError,
    InvalidRequestError,
    KeysUnavailableError,
    MissingTokenError,
    OtherCustomerError,
    TokenRefusedError,
)
from app.auth.keys import KeySet, key_set
from app.auth.minting import local_token, mint
from app.auth.tokens import READ, SCOPES, WRITE, Principal, TokenRules
from app.auth.verifier import TokenVerifier

__all__ = [
    "READ",
    "SCOPES",
    "WRITE",
    "AccessRefusedError",
    "InsufficientScopeError",
    "InvalidRequestError",
    "KeySet",
    "KeysUnavailableError",
    "MissingTokenError",
    "OtherCustomerError",
    "Principal",
    "TokenRefusedError",
    "TokenRules",
    "TokenVerifier",
    "key_set",
    "local_token",
    "mint",
]

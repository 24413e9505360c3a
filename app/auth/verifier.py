"""Bearer token -> Principal, remembering tokens already verified.

A signature check costs tens of microseconds (ES256) and a client sends the same token until it
expires, so each verified token is kept, with its principal and expiry, in a bounded dict: a
request with a known token costs a lookup and a clock read (~1 us). The expiry is checked on
every hit, so a remembered token stops working when it expires, as a new one would. What is
not re-checked on a hit is the key: a key removed from the JWKS stops verifying new tokens at
once, and tokens it signed until they expire (issuers keep access tokens short for this).
Refused tokens are not remembered: a client cannot fill the cache with them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from app.auth.errors import TokenRefusedError
from app.auth.keys import KeySet
from app.auth.tokens import Principal, TokenRules, key_id, verify


class TokenVerifier:
    def __init__(
        self,
        keys: KeySet,
        rules: TokenRules,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.rules = rules
        self.cache_size = cache_size
        self.clock = clock
        self._verified: dict[str, tuple[Principal, float]] = {}

    async def start(self) -> None:
        await self.keys.start()

    async def principal(self, token: str) -> Principal:
        """The token's principal; TokenRefusedError if it is not acceptable now."""
        remembered = self._verified.get(token)
        if remembered is not None:
            principal, expires = remembered
            if self.clock() < expires + self.rules.leeway_s:
                return principal
            del self._verified[token]
            msg = "the token has expired"
            raise TokenRefusedError(msg)
        key = await self.keys.key(key_id(token))
        if key is None:
            msg = "the token is signed with a key this API does not know"
            raise TokenRefusedError(msg)
        principal, expires = verify(token, key, self.rules)
        self._remember(token, principal, expires)
        return principal

    def _remember(self, token: str, principal: Principal, expires: float) -> None:
        if self.cache_size <= 0:
            return
        if len(self._verified) >= self.cache_size:
            # dicts keep insertion order: the first is the token verified longest ago.
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (principal, expires)

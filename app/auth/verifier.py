"""Bearer token -> Principal, remembering tokens already verified.

A signature check costs tens of microseconds (ES256) and a client sends the same token until it
expires, so each verified token is kept, with its principal, in a bounded dict: a request with a
known token costs a lookup, a clock read and two comparisons (~1 us). A remembered token is used
only while all of these hold, else it is verified again from scratch (or refused):
- it has not expired (checked on every hit, so it stops working when it expires, as a new one
  would);
- the key set has not removed or replaced a key since it was verified (its generation, see
  app/auth/keys.py): a key taken out of the JWKS takes its remembered tokens with it as soon as
  the set is reloaded without it;
- it was verified less than MAX_REMEMBERED_S ago, so every token is verified again (and its key
  looked up, which reloads a changed JWKS file or a JWKS URL past its age) at least that often,
  however far away its `exp` is.
Refused tokens are not remembered: a client cannot fill the cache with them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from app.auth.errors import TokenRefusedError
from app.auth.keys import KeySet
from app.auth.tokens import Principal, TokenRules, key_id, verify

# The longest a verified token is trusted without verifying it again. Five minutes: the
# signature check it saves is tens of microseconds once per 5 minutes per client, nothing.
MAX_REMEMBERED_S = 300.0


class TokenVerifier:
    def __init__(
        self,
        keys: KeySet,
        rules: TokenRules,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        max_remembered_s: float = MAX_REMEMBERED_S,
    ) -> None:
        self.keys = keys
        self.rules = rules
        self.cache_size = cache_size
        self.clock = clock
        self.max_remembered_s = max_remembered_s
        # token -> (principal, expiry with the leeway, trusted until, key set generation)
        self._verified: dict[str, tuple[Principal, float, float, int]] = {}

    async def start(self) -> None:
        await self.keys.start()

    async def principal(self, token: str) -> Principal:
        """The token's principal; TokenRefusedError if it is not acceptable now."""
        remembered = self._verified.get(token)
        if remembered is not None:
            principal, expires, until, generation = remembered
            now = self.clock()
            if now < until and generation == self.keys.generation:
                return principal
            del self._verified[token]
            if now >= expires:
                msg = "the token has expired"
                raise TokenRefusedError(msg)
            # Remembered long enough, or its key set changed: verified again below.
        key = await self.keys.key(key_id(token))
        if key is None:
            msg = "the token is signed with a key this API does not know"
            raise TokenRefusedError(msg)
        now = self.clock()
        principal, exp = verify(token, key, self.rules, now)
        self._remember(token, principal, exp + self.rules.leeway_s, now)
        return principal

    def _remember(self, token: str, principal: Principal, expires: float, now: float) -> None:
        if self.cache_size <= 0:
            return
        if len(self._verified) >= self.cache_size:
            # dicts keep insertion order: the first is the token verified longest ago.
            del self._verified[next(iter(self._verified))]
        until = min(expires, now + self.max_remembered_s)
        self._verified[token] = (principal, expires, until, self.keys.generation)

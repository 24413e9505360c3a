"""Verification keys by `kid`: a JWKS file, a JWKS URL, or the local development key.

Each key's algorithm is pinned here, from the key itself (RS256 for RSA, ES256 for EC P-256),
never from a token: a token naming another algorithm for a key is refused (RFC 8725 2.1). Keys
of any other kind in a JWKS are skipped, symmetric ("oct") ones included, so HS256 is never
accepted, even signed with a public key's bytes (the classic algorithm confusion).

Rotation: an issuer publishes the new key beside the old one, then signs with it, then removes
the old one. A JWKS file is read again when it changed, looked at for each token verified (a
token not seen before, or one remembered for long enough: app/auth/verifier.py); a JWKS URL is
fetched again for a `kid` not seen yet (at most once per AUTH_JWKS_REFRESH_COOLDOWN_S) and once
its keys are AUTH_JWKS_MAX_AGE_S old, so a key removed from it stops verifying tokens by then.

Each key set has a generation, which a reload moves on when it removes a key or replaces one
under the same kid (adding keys leaves it be). The verifier remembers the generation each token
was verified under, so the tokens of a removed key, remembered or not, stop working as soon as
the set is reloaded without it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from jwt import PyJWK, PyJWKClient
from jwt.exceptions import PyJWKClientError, PyJWTError

from app.auth.errors import KeysUnavailableError
from app.auth.local_key import local_signing_key, public_jwk
from app.errors import ConfigurationError
from app.settings import AuthSettings

log = logging.getLogger(__name__)

PINNED_ALGORITHMS = {"RSA": "RS256", "EC": "ES256"}


def verification_key(jwk: Any) -> PyJWK | None:
    """The key a JWK describes, its algorithm pinned; None for a key this API never accepts
    (no kid, symmetric, another curve, an encryption key, an RSA key under 2048 bits)."""
    if not isinstance(jwk, dict):
        return None
    algorithm = PINNED_ALGORITHMS.get(jwk.get("kty", ""))
    kid = jwk.get("kid")
    if algorithm is None or not isinstance(kid, str) or not kid:
        return None
    if jwk.get("use", "sig") != "sig" or jwk.get("alg", algorithm) != algorithm:
        return None
    if jwk["kty"] == "EC" and jwk.get("crv") != "P-256":
        return None
    try:
        key = PyJWK(jwk, algorithm)
    except PyJWTError:
        return None
    if key.Algorithm.check_key_length(key.key) is not None:
        return None
    return key


def keys_of(jwks: Any) -> dict[str, PyJWK]:
    """The usable keys of a JWKS document, by kid (the first of a repeated kid wins)."""
    found: dict[str, PyJWK] = {}
    members = jwks.get("keys") if isinstance(jwks, dict) else None
    for jwk in members if isinstance(members, list) else []:
        key = verification_key(jwk)
        if key is not None and key.key_id is not None:
            found.setdefault(key.key_id, key)
    return found


def public_material(key: PyJWK) -> bytes:
    """The public key's bytes (DER), to tell whether a kid still names the same key."""
    found = key.key
    public = found.public_key() if hasattr(found, "public_key") else found  # a JWK with "d"
    der: bytes = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


class KeySet(ABC):
    """The keys tokens may be signed with. `key` may reload them (on an unknown kid)."""

    def __init__(self) -> None:
        self.keys: dict[str, PyJWK] = {}
        # Moves on when a reload removes or replaces a key (app/auth/verifier.py reads it).
        self.generation = 0
        self._reloading = asyncio.Lock()

    def publish(self, keys: dict[str, PyJWK]) -> None:
        """Use `keys` from now on; a key gone or changed moves the generation on."""
        kept = all(
            kid in keys and public_material(keys[kid]) == public_material(old)
            for kid, old in self.keys.items()
        )
        if not kept:
            self.generation += 1
        self.keys = keys

    async def start(self) -> None:
        await self.reload()

    async def key(self, kid: str) -> PyJWK | None:
        found = self.keys.get(kid)
        # An unknown kid also waits for a reload already under way: it may bring the key.
        if (found is None and self._reloading.locked()) or self._wants_reload(found is None):
            async with self._reloading:  # concurrent misses share one reload
                if self._wants_reload(kid not in self.keys):
                    await self.reload()
            found = self.keys.get(kid)
        return found

    def _wants_reload(self, unknown: bool) -> bool:
        return (unknown and self.may_reload()) or self.stale()

    def may_reload(self) -> bool:
        return False

    def stale(self) -> bool:
        return False

    @abstractmethod
    async def reload(self) -> None: ...


class LocalKey(KeySet):
    """The development key's public half (app/auth/local_key.py); it never changes."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    async def reload(self) -> None:
        self.publish(keys_of({"keys": [public_jwk(local_signing_key(self.path))]}))


class JwksFile(KeySet):
    """A JWKS in a local file, read again when it changed (looked at for each new token)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._read: tuple[int, int, int] | None = None

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def may_reload(self) -> bool:
        return self._signature() != self._read

    def stale(self) -> bool:
        # A stat per token not seen before (a few us beside a signature check), so a key
        # removed from the file stops verifying new tokens at once.
        return self.may_reload()

    async def reload(self) -> None:
        signature = self._signature()
        try:
            document = json.loads(self.path.read_bytes())
        except (OSError, ValueError) as exc:
            if self._read is None:  # at start: a configuration error
                msg = f"AUTH_JWKS_FILE: cannot read a JWKS from {self.path}: {exc}"
                raise ConfigurationError(msg) from exc
            log.warning("AUTH_JWKS_FILE %s unreadable, keeping its last keys: %s", self.path, exc)
            return
        self.publish(keys_of(document))
        self._read = signature
        log.info("JWKS file %s: %d usable key(s)", self.path, len(self.keys))


class JwksUrl(KeySet):
    """A JWKS served over HTTP(S), fetched with PyJWKClient in a thread (never on the loop)."""

    def __init__(self, url: str, max_age_s: float, cooldown_s: float, timeout_s: float) -> None:
        super().__init__()
        self.client = PyJWKClient(url, cache_jwk_set=False, timeout=timeout_s)
        self.max_age_s = max_age_s
        self.cooldown_s = cooldown_s
        self._fetched_at = -float("inf")  # monotonic time of the last successful fetch
        self._tried_at = -float("inf")

    def may_reload(self) -> bool:
        return time.monotonic() - self._tried_at >= self.cooldown_s

    def stale(self) -> bool:
        return time.monotonic() - self._fetched_at >= self.max_age_s and self.may_reload()

    async def start(self) -> None:
        try:
            await self.reload()
        except KeysUnavailableError:  # the issuer may come up later: not fatal (reload logged it)
            log.error("no JWKS yet: tokens are refused (503) until %s answers", self.uri)  # noqa: TRY400

    async def key(self, kid: str) -> PyJWK | None:
        found = await super().key(kid)
        if found is None and not self.keys:  # never fetched: the token may well be good
            msg = f"the JWKS at {self.uri} has not been fetched yet"
            raise KeysUnavailableError(msg)
        return found

    async def reload(self) -> None:
        self._tried_at = time.monotonic()
        try:
            document = await asyncio.to_thread(self.client.fetch_data)
        except (PyJWKClientError, ValueError) as exc:  # unreachable, or not JSON
            if self.keys:  # keep serving the last keys through an issuer's blip
                log.warning("JWKS %s did not answer, keeping its last keys: %s", self.uri, exc)
                return
            log.warning("JWKS %s did not answer: %s", self.uri, exc)
            msg = f"the JWKS at {self.uri} did not answer"
            raise KeysUnavailableError(msg) from exc
        self.publish(keys_of(document))
        self._fetched_at = time.monotonic()
        log.info("JWKS %s: %d usable key(s)", self.uri, len(self.keys))

    @property
    def uri(self) -> str:
        return self.client.uri


def key_set(settings: AuthSettings) -> KeySet:
    """The key source the settings name: a JWKS file, a JWKS URL, or the local key."""
    if settings.jwks_file is not None:
        return JwksFile(settings.jwks_file)
    if settings.jwks_url is not None:
        return JwksUrl(
            settings.jwks_url,
            settings.jwks_max_age_s,
            settings.jwks_refresh_cooldown_s,
            settings.jwks_timeout_s,
        )
    return LocalKey(settings.local_key_file)

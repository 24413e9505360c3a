"""Where verification keys come from: the local development key, a JWKS URL; and minting."""

from __future__ import annotations

import asyncio
import json
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from app.auth import KeysUnavailableError, TokenRules, TokenVerifier, local_token, mint
from app.auth.keys import JwksUrl, LocalKey, key_set
from app.auth.local_key import local_signing_key, public_jwk, thumbprint
from app.errors import ConfigurationError
from app.settings import AuthSettings, load_settings


def test_the_local_key_is_made_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "state" / "auth" / "local-signing-key.pem"
    first = local_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = local_signing_key(path)
    assert public_jwk(first) == public_jwk(again)
    assert list(path.parent.iterdir()) == [path]  # nothing left aside


def test_a_file_that_is_not_a_p256_key_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text("not a key")
    with pytest.raises(ConfigurationError, match="AUTH_LOCAL_KEY_FILE"):
        local_signing_key(path)


def test_the_thumbprint_is_rfc_7638s() -> None:
    # The example of RFC 7638 section 3.1.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tS"
        "oc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR"
        "0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhA"
        "I4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


async def test_a_minted_token_verifies_with_the_local_key(tmp_path: Path) -> None:
    settings = AuthSettings(local_key_file=tmp_path / "key.pem")
    token = local_token(settings, "shop", ["orders:write"], customer="c-7", ttl_s=60)
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"
    keys = key_set(settings)
    assert isinstance(keys, LocalKey)
    verifier = TokenVerifier(keys, TokenRules(settings.issuer, settings.audience, 0))
    await verifier.start()
    principal = await verifier.principal(token)
    assert (principal.subject, principal.client_id, principal.customer) == ("shop", "shop", "c-7")
    assert principal.scopes == {"orders:write"}
    assert header["kid"] in keys.keys


def test_minting_refuses_unknown_scopes_and_long_lives() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    common: dict[str, Any] = {"issuer": "i", "audience": "a", "subject": "s"}
    with pytest.raises(ValueError, match="unknown scope"):
        mint(key, scopes=["orders:delete"], **common)
    with pytest.raises(ValueError, match="ttl"):
        mint(key, scopes=["orders:read"], ttl_s=8 * 24 * 3600, **common)


def test_both_jwks_sources_at_once_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="not both"):
        AuthSettings(jwks_file=Path("/x.json"), jwks_url="https://issuer.example/jwks")


@pytest.mark.parametrize(
    "url",
    [
        "https://issuer.example/.well-known/jwks.json",
        "HTTPS://issuer.example/jwks",
        "http://127.0.0.1:8080/jwks",
        "http://localhost/jwks",
        "http://[::1]:9000/jwks",
    ],
)
def test_a_jwks_url_is_https_or_on_loopback(url: str) -> None:
    assert AuthSettings(jwks_url=url).jwks_url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://issuer.example/jwks",
        "http://127.0.0.1.evil.example/jwks",
        "http://localhost.evil.example/jwks",
        "http://10.0.0.1/jwks",
        "ftp://issuer.example/jwks",
        "file:///etc/jwks.json",
        "https:///jwks",
        "http://[::1/jwks",
        "issuer.example/jwks",
    ],
)
def test_a_jwks_url_over_plain_http_off_the_machine_is_refused_naming_the_variable(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="AUTH_JWKS_URL must be an https:// URL"):
        AuthSettings(jwks_url=url)
    monkeypatch.chdir("/")  # no .env
    monkeypatch.setenv("AUTH_JWKS_URL", url)
    with pytest.raises(ConfigurationError, match="AUTH_JWKS_URL"):
        load_settings()


class JwksServer:
    """A JWKS endpoint on loopback that counts its fetches."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                body = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


async def test_a_jwks_url_is_fetched_again_for_an_unknown_kid_once_per_cooldown(
    jwks_server: JwksServer,
) -> None:
    old, new = (public_jwk(ec.generate_private_key(ec.SECP256R1())) for _ in range(2))
    jwks_server.document = {"keys": [old]}
    keys = JwksUrl(jwks_server.url, max_age_s=300, cooldown_s=0.3, timeout_s=2)
    await keys.start()
    assert jwks_server.fetches == 1
    assert await keys.key(old["kid"]) is not None
    jwks_server.document = {"keys": [old, new]}
    # Within the cooldown an unknown kid fetches nothing: made-up kids cannot flood the issuer.
    assert await asyncio.gather(*(keys.key(f"made-up-{n}") for n in range(20))) == [None] * 20
    assert jwks_server.fetches == 1
    await asyncio.sleep(0.35)
    found = await asyncio.gather(*(keys.key(new["kid"]) for _ in range(5)))
    assert all(key is not None for key in found)
    assert jwks_server.fetches == 2  # five concurrent misses, one fetch


async def test_a_jwks_url_that_never_answered_makes_tokens_uncheckable_not_invalid(
    jwks_server: JwksServer,
) -> None:
    url = jwks_server.url
    jwks_server.close()
    keys = JwksUrl(url, max_age_s=300, cooldown_s=0, timeout_s=1)
    await keys.start()  # logged, not fatal: the issuer may come up later
    with pytest.raises(KeysUnavailableError):
        await keys.key("any")


async def test_a_jwks_url_reload_moves_the_generation_on_only_when_a_key_goes(
    jwks_server: JwksServer,
) -> None:
    old, new = (public_jwk(ec.generate_private_key(ec.SECP256R1())) for _ in range(2))
    jwks_server.document = {"keys": [old]}
    keys = JwksUrl(jwks_server.url, max_age_s=300, cooldown_s=0, timeout_s=2)
    await keys.start()
    first = keys.generation
    jwks_server.document = {"keys": [old, new]}
    await keys.reload()  # the same keys, one added: remembered tokens stay good
    assert keys.generation == first
    jwks_server.document = {"keys": [new]}
    await keys.reload()
    assert keys.generation == first + 1

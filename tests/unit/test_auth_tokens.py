"""The verification rules for bearer access tokens (app/auth), without services."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.auth import Principal, TokenRefusedError, TokenRules, TokenVerifier
from app.auth.keys import JwksFile, keys_of, verification_key
from app.auth.local_key import public_jwk

ISSUER, AUDIENCE = "https://issuer.example", "orders-api"
RULES = TokenRules(ISSUER, AUDIENCE, leeway_s=30)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    found: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "service-a",
        "client_id": "app-1",
        "iat": now,
        "exp": now + 600,
        "jti": "id-1",
        "scope": "orders:write orders:read",
    }
    found.update(overrides)
    return {name: value for name, value in found.items() if value is not None}


class Issuer:
    """An ES256 key and the JWKS file that publishes it."""

    def __init__(self, folder: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.jwk = public_jwk(self.key)
        self.kid = self.jwk["kid"]
        self.jwks = folder / "jwks.json"
        self.publish(self.jwk)

    def publish(self, *jwks: dict[str, Any]) -> None:
        self.jwks.write_text(json.dumps({"keys": list(jwks)}))

    def token(self, header: dict[str, Any] | None = None, **overrides: Any) -> str:
        headers = {"typ": "at+jwt", "kid": self.kid, **(header or {})}
        return jwt.encode(claims(**overrides), self.key, algorithm="ES256", headers=headers)

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def unsigned(header: dict[str, Any], body: dict[str, Any], sign: Any = None) -> str:
    """A token built by hand, as an attacker would: PyJWT refuses to make these."""
    head = b64url(json.dumps(header).encode())
    payload = b64url(json.dumps(body).encode())
    signature = sign(f"{head}.{payload}".encode()) if sign else b""
    return f"{head}.{payload}.{b64url(signature)}"


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(tmp_path)


@pytest.fixture
async def verifier(issuer: Issuer) -> TokenVerifier:
    verifier = TokenVerifier(JwksFile(issuer.jwks), RULES)
    await verifier.start()
    return verifier


async def refusal(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(TokenRefusedError) as refused:
        await verifier.principal(token)
    return str(refused.value)


async def test_a_valid_token_names_its_principal(issuer: Issuer, verifier: TokenVerifier) -> None:
    principal = await verifier.principal(issuer.token(customer_id="c-1"))
    assert principal.subject == "service-a"
    assert principal.client_id == "app-1"
    assert principal.issuer == ISSUER
    assert principal.scopes == {"orders:write", "orders:read"}
    assert principal.customer == "c-1"
    assert principal.acts_for("c-1")
    assert not principal.acts_for("c-2")


async def test_a_token_without_a_customer_acts_for_any(
    issuer: Issuer, verifier: TokenVerifier
) -> None:
    principal = await verifier.principal(issuer.token(scope="orders:read"))
    assert principal.customer is None
    assert principal.acts_for("anyone")
    assert principal.scopes == {"orders:read"}


def test_two_subjects_of_one_client_application_are_two_clients() -> None:
    one = Principal("alice", "web-app", ISSUER, frozenset())
    other = Principal("bob", "web-app", ISSUER, frozenset())
    assert one.client_key != other.client_key
    # No separator trick makes two principals one client.
    assert Principal("a b", "c", ISSUER, frozenset()).client_key != (
        Principal("a", "b c", ISSUER, frozenset()).client_key
    )


async def test_expiry_allows_the_leeway_and_no_more(
    issuer: Issuer, verifier: TokenVerifier
) -> None:
    now = int(time.time())
    assert await verifier.principal(issuer.token(exp=now - 10, jti="within"))
    why = await refusal(verifier, issuer.token(exp=now - 40, jti="past"))
    assert why == "the token has expired"


async def test_not_before_and_issued_at_allow_the_leeway_and_no_more(
    issuer: Issuer, verifier: TokenVerifier
) -> None:
    now = int(time.time())
    assert await verifier.principal(issuer.token(nbf=now + 10))
    assert "not valid yet" in await refusal(verifier, issuer.token(nbf=now + 60))
    assert "not valid yet" in await refusal(verifier, issuer.token(iat=now + 60))


async def test_the_audience_may_be_a_list_that_holds_ours(
    issuer: Issuer, verifier: TokenVerifier
) -> None:
    assert await verifier.principal(issuer.token(aud=["billing", AUDIENCE]))
    why = await refusal(verifier, issuer.token(aud=["billing", "shipping"]))
    assert why == "the token is meant for another audience"
    assert "another audience" in await refusal(verifier, issuer.token(aud="orders"))


async def test_another_issuer_is_refused(issuer: Issuer, verifier: TokenVerifier) -> None:
    why = await refusal(verifier, issuer.token(iss="https://elsewhere.example"))
    assert why == "the token comes from another issuer"


@pytest.mark.parametrize("claim", ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"])
async def test_every_claim_rfc_9068_requires_is_required(
    issuer: Issuer, verifier: TokenVerifier, claim: str
) -> None:
    why = await refusal(verifier, issuer.token(**{claim: None}))
    assert claim in why


@pytest.mark.parametrize("typ", [None, "JWT", "at+JWT-not", "id_token"])
async def test_only_an_access_token_type_is_accepted(
    issuer: Issuer, verifier: TokenVerifier, typ: str | None
) -> None:
    token = jwt.encode(claims(), issuer.key, algorithm="ES256", headers={"kid": issuer.kid})
    if typ is not None:
        token = issuer.token(header={"typ": typ})
    assert "typ must be at+jwt" in await refusal(verifier, token)


async def test_the_media_type_spelling_of_the_type_is_accepted(
    issuer: Issuer, verifier: TokenVerifier
) -> None:
    assert await verifier.principal(issuer.token(header={"typ": "application/AT+JWT"}))


async def test_alg_none_is_refused(issuer: Issuer, verifier: TokenVerifier) -> None:
    token = unsigned({"alg": "none", "typ": "at+jwt", "kid": issuer.kid}, claims())
    assert await refusal(verifier, token) == "the token's algorithm is not accepted"


async def test_hs256_signed_with_the_public_key_is_refused(
    issuer: Issuer, verifier: TokenVerifier
) -> None:
    """The algorithm confusion attack: a verifier that lets the token choose HS256 would use
    the (public) key's bytes as the HMAC secret, and this signature would verify."""
    pem = issuer.public_pem()
    token = unsigned(
        {"alg": "HS256", "typ": "at+jwt", "kid": issuer.kid},
        claims(),
        lambda signing_input: hmac.new(pem, signing_input, hashlib.sha256).digest(),
    )
    assert await refusal(verifier, token) == "the token's algorithm is not accepted"


async def test_rs256_for_an_es256_key_is_refused(issuer: Issuer, verifier: TokenVerifier) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(
        claims(), other, algorithm="RS256", headers={"typ": "at+jwt", "kid": issuer.kid}
    )
    assert await refusal(verifier, token) == "the token's algorithm is not the one of its key"


async def test_a_forged_signature_is_refused(issuer: Issuer, verifier: TokenVerifier) -> None:
    forger = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(
        claims(), forger, algorithm="ES256", headers={"typ": "at+jwt", "kid": issuer.kid}
    )
    assert await refusal(verifier, token) == "the token's signature does not verify"


async def test_an_unknown_kid_is_refused_without_echoing_it(
    issuer: Issuer, verifier: TokenVerifier
) -> None:
    token = issuer.token(header={"kid": '<script>"x"</script>'})
    why = await refusal(verifier, token)
    assert why == "the token is signed with a key this API does not know"


async def test_garbage_is_refused_as_malformed(verifier: TokenVerifier) -> None:
    assert await refusal(verifier, "not-a-jwt") == "the token is not a well-formed JWT"
    assert await refusal(verifier, "a" * 10_000) == "the token is too long"


async def test_a_new_key_in_the_jwks_file_is_picked_up_on_its_first_token(
    issuer: Issuer, verifier: TokenVerifier, tmp_path: Path
) -> None:
    (tmp_path / "next").mkdir()
    rotated = Issuer(tmp_path / "next")  # a new key, published in its own file for now
    token = rotated.token()
    assert "does not know" in await refusal(verifier, token)  # not published yet
    issuer.publish(issuer.jwk, rotated.jwk)  # rotation: the new key beside the old one
    principal = await verifier.principal(token)
    assert principal.subject == "service-a"
    assert await verifier.principal(issuer.token(jti="old-key-still-good"))
    issuer.publish(rotated.jwk)  # the old key retired
    assert "does not know" in await refusal(verifier, issuer.token(jti="old-key-now-gone"))


async def test_a_remembered_token_is_checked_for_expiry_on_every_use(issuer: Issuer) -> None:
    now = [time.time()]
    verifier = TokenVerifier(JwksFile(issuer.jwks), RULES, clock=lambda: now[0])
    await verifier.start()
    token = issuer.token(exp=int(now[0]) + 60)
    first = await verifier.principal(token)
    assert await verifier.principal(token) is first  # remembered: the same principal
    now[0] += 60 + RULES.leeway_s + 1
    assert await refusal(verifier, token) == "the token has expired"


async def test_the_cache_is_bounded_and_forgets_the_oldest(issuer: Issuer) -> None:
    verifier = TokenVerifier(JwksFile(issuer.jwks), RULES, cache_size=2)
    await verifier.start()
    tokens = [issuer.token(jti=f"t-{n}") for n in range(3)]
    principals = [await verifier.principal(token) for token in tokens]
    assert list(verifier._verified) == tokens[1:]
    assert await verifier.principal(tokens[2]) is principals[2]


def test_only_signature_keys_of_pinned_kinds_are_kept() -> None:
    es = public_jwk(ec.generate_private_key(ec.SECP256R1()))
    p384 = jwt.algorithms.ECAlgorithm.to_jwk(
        ec.generate_private_key(ec.SECP384R1()).public_key(), as_dict=True
    )
    small_rsa = jwt.algorithms.RSAAlgorithm.to_jwk(
        rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(),
        as_dict=True,
    )
    rsa_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
        as_dict=True,
    )
    document = {
        "keys": [
            es,
            {**rsa_jwk, "kid": "rsa"},
            {"kty": "oct", "k": b64url(b"secret" * 6), "kid": "hmac"},
            {**p384, "kid": "p384"},
            {**small_rsa, "kid": "small"},
            {**es, "kid": "enc", "use": "enc"},
            {**es, "kid": "claims-hs256", "alg": "HS256"},
            {**es, "kid": None},
        ]
    }
    keys = keys_of(document)
    assert set(keys) == {es["kid"], "rsa"}
    assert keys["rsa"].algorithm_name == "RS256"
    assert keys[es["kid"]].algorithm_name == "ES256"
    assert verification_key("not a jwk") is None


async def test_a_token_signed_with_an_rsa_key_of_the_jwks_is_accepted(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "r1"}
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    verifier = TokenVerifier(JwksFile(tmp_path / "jwks.json"), RULES)
    await verifier.start()
    token = jwt.encode(claims(), key, algorithm="RS256", headers={"typ": "at+jwt", "kid": "r1"})
    assert (await verifier.principal(token)).subject == "service-a"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize(
    "value",
    ["9999999999", True, 10**400, float("inf"), float("nan"), [1], {"n": 1}],
    ids=["string", "bool", "10**400", "infinity", "nan", "list", "object"],
)
async def test_a_date_claim_must_be_a_finite_number(
    issuer: Issuer, verifier: TokenVerifier, claim: str, value: Any
) -> None:
    """RFC 7519's NumericDate is a JSON number: a string that looks like one is refused, and a
    number too large for a float is refused (it was an OverflowError, a 500)."""
    why = await refusal(verifier, issuer.token(**{claim: value}))
    assert why == "the token's exp, nbf and iat claims must be finite numbers (NumericDate)"


async def test_a_date_claim_may_be_a_fraction(issuer: Issuer, verifier: TokenVerifier) -> None:
    now = time.time()
    assert await verifier.principal(issuer.token(iat=now - 0.5, nbf=now - 0.25, exp=now + 60.5))


async def test_removing_a_key_ends_its_remembered_tokens_at_the_next_reload(
    issuer: Issuer, verifier: TokenVerifier, tmp_path: Path
) -> None:
    (tmp_path / "next").mkdir()
    rotated = Issuer(tmp_path / "next")
    issuer.publish(issuer.jwk, rotated.jwk)
    old_token = issuer.token(jti="signed-with-the-old-key")
    assert await verifier.principal(old_token)  # remembered now
    assert await verifier.principal(rotated.token(jti="the-new-key"))  # adding keeps it
    assert await verifier.principal(old_token)
    issuer.publish(rotated.jwk)  # the old key removed (compromised, say)
    assert await verifier.principal(rotated.token(jti="another"))  # the set is reloaded
    assert "does not know" in await refusal(verifier, old_token)


async def test_a_key_replaced_under_the_same_kid_ends_its_remembered_tokens(
    issuer: Issuer, tmp_path: Path
) -> None:
    keys = JwksFile(issuer.jwks)
    verifier = TokenVerifier(keys, RULES)
    await verifier.start()
    token = issuer.token()
    assert await verifier.principal(token)
    (tmp_path / "other").mkdir()
    impostor = Issuer(tmp_path / "other")
    issuer.publish({**impostor.jwk, "kid": issuer.kid})  # same kid, another key
    await keys.reload()
    assert await refusal(verifier, token) == "the token's signature does not verify"


async def test_a_remembered_token_is_verified_again_after_five_minutes(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.auth import verifier as verifier_module

    verified: list[str] = []
    real_verify = verifier_module.verify

    def counting_verify(token: str, *args: Any) -> Any:
        verified.append(token)
        return real_verify(token, *args)

    monkeypatch.setattr(verifier_module, "verify", counting_verify)
    now = [time.time()]
    verifier = TokenVerifier(JwksFile(issuer.jwks), RULES, clock=lambda: now[0])
    await verifier.start()
    token = issuer.token(exp=1e308)  # however far its expiry, it is not trusted forever
    for _ in range(3):
        await verifier.principal(token)
    assert len(verified) == 1
    now[0] += 299
    await verifier.principal(token)
    assert len(verified) == 1
    now[0] += 2
    await verifier.principal(token)
    assert len(verified) == 2
    issuer.publish()  # the key removed, and no new token: noticed at the next verification
    assert await verifier.principal(token)
    now[0] += 301
    assert "does not know" in await refusal(verifier, token)

"""Who may do what, against the real app, broker and database: every route x every kind of
token gets its documented status, and no refused request puts anything on the topic."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.ext.asyncio import AsyncEngine

from app import contract
from app.api import health
from app.api.deps import Resources
from app.auth import mint
from app.auth.local_key import local_signing_key, public_jwk
from app.settings import ApiSettings, Settings
from tests.integration.api_client import api_client, bearer, order_body, token_for
from tests.integration.kafka_tools import read_topic
from tests.integration.oracle import Expectations, wait_until_stored
from tests.integration.worker_harness import worker_running

PROBLEM_JSON = "application/problem+json"
CHALLENGE = 'Bearer realm="orders"'


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A token built by hand, as an attacker would (PyJWT refuses to make these)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


class Tokens:
    """Every kind of token the matrix tries, for customer `alice`'s orders."""

    def __init__(self, settings: Settings, run: str) -> None:
        self.settings = settings
        self.alice, self.bob = f"{run}-alice", f"{run}-bob"
        key = local_signing_key(settings.auth.local_key_file)
        kid = public_jwk(key)["kid"]
        now = int(time.time())
        good = {
            "iss": settings.auth.issuer,
            "aud": settings.auth.audience,
            "sub": f"{run}-someone",
            "client_id": f"{run}-app",
            "iat": now,
            "exp": now + 600,
            "jti": str(uuid.uuid4()),
            "scope": "orders:write orders:read",
        }
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        stranger = ec.generate_private_key(ec.SECP256R1())  # a key in no JWKS
        self.refused_as_invalid: dict[str, str] = {
            "expired": self.mint(key, subject="late", iat=now - 7200, exp=now - 3600),
            "wrong audience": self.mint(key, subject="aud", aud="another-api"),
            "wrong issuer": self.mint(key, subject="iss", iss="https://elsewhere.example"),
            "wrong key": jwt.encode(
                good, stranger, "ES256", {"typ": "at+jwt", "kid": public_jwk(stranger)["kid"]}
            ),
            "alg none": forged({"alg": "none", "typ": "at+jwt", "kid": kid}, good, lambda _: b""),
            "hs256 with the public key": forged(
                {"alg": "HS256", "typ": "at+jwt", "kid": kid},
                good,
                lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
            ),
            "wrong typ (an ID token)": jwt.encode(good, key, "ES256", {"typ": "JWT", "kid": kid}),
            "malformed": "not.a.jwt",
        }
        self.alice_token = token_for(settings, f"{run}-alice-user", customer=self.alice)
        self.bob_token = token_for(settings, f"{run}-bob-user", customer=self.bob)
        self.service_token = token_for(settings, f"{run}-service")
        self.write_only = token_for(settings, f"{run}-writer", scopes=("orders:write",))
        self.read_only = token_for(settings, f"{run}-reader", scopes=("orders:read",))

    def mint(self, key: ec.EllipticCurvePrivateKey, subject: str, **claims: Any) -> str:
        auth = self.settings.auth
        return mint(
            key,
            issuer=auth.issuer,
            audience=auth.audience,
            subject=subject,
            scopes=["orders:write", "orders:read"],
            **claims,
        )


async def stored_order_of(settings: Settings, engine: AsyncEngine, customer: str) -> str:
    """An order of `customer`'s, placed by a service and stored by a worker: its id."""
    async with api_client(settings) as client:
        placed = await client.post("/orders", json=order_body(customer, 1))
    assert placed.status_code == 202, placed.text
    expected = Expectations()
    expected.accept(customer, uuid.UUID(placed.json()["order_id"]))
    async with worker_running(settings, engine):
        assert await wait_until_stored(engine, expected) == 1
    return str(placed.json()["order_id"])


def assert_refused(response: httpx.Response, status: int, case: str) -> None:
    assert response.status_code == status, f"{case}: {response.status_code} {response.text}"
    assert response.headers["content-type"] == PROBLEM_JSON, case
    assert response.json()["status"] == status, case


async def test_every_route_gives_every_token_its_documented_answer_and_refusals_produce_nothing(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    tokens = Tokens(settings, run_id)
    alice, bob = tokens.alice, tokens.bob
    alices_order = await stored_order_of(settings, engine, alice)
    writes = {
        "POST /orders": ("post", "/orders", order_body(alice, 2)),
        "POST /orders/validate": ("post", "/orders/validate", order_body(alice, 3)),
    }
    reads = {
        "GET /orders/{id}": ("get", f"/orders/{alices_order}", None),
        "GET /customers/{id}/orders": ("get", f"/customers/{alice}/orders", None),
    }
    accepted: list[str] = []

    async with api_client(settings, authenticated=False) as client:

        async def call(
            route: tuple[str, str, Any], token: str | None, *more: str
        ) -> httpx.Response:
            method, path, body = route
            headers = [("Authorization", f"Bearer {each}") for each in (token, *more) if each]
            if token == "":  # the Bearer scheme without a token
                headers = [("Authorization", "Bearer")]
            response = await client.request(method, path, json=body, headers=headers)
            if response.status_code == 202:
                accepted.append(response.json()["order_id"])
            return response

        for name, route in {**writes, **reads}.items():
            scope = "orders:write" if name in writes else "orders:read"

            missing = await call(route, None)
            assert_refused(missing, 401, f"{name}, no token")
            assert missing.headers["www-authenticate"] == CHALLENGE, name

            # RFC 6750 section 3.1: a malformed request, whatever its tokens are worth.
            malformed = {
                "two Authorization headers": await call(
                    route, tokens.alice_token, tokens.service_token
                ),
                "an empty bearer token": await call(route, ""),
            }
            for case, response in malformed.items():
                assert_refused(response, 400, f"{name}, {case}")
                assert response.headers["www-authenticate"] == (
                    f'{CHALLENGE}, error="invalid_request"'
                ), case

            for case, token in tokens.refused_as_invalid.items():
                refused = await call(route, token)
                assert_refused(refused, 401, f"{name}, {case}")
                challenge = refused.headers["www-authenticate"]
                assert challenge.startswith(f'{CHALLENGE}, error="invalid_token"'), case
                assert 'error_description="the token' in challenge, case

            lacking = tokens.read_only if name in writes else tokens.write_only
            unscoped = await call(route, lacking)
            assert_refused(unscoped, 403, f"{name}, lacking {scope}")
            assert unscoped.headers["www-authenticate"] == (
                f'{CHALLENGE}, error="insufficient_scope", error_description="this operation '
                f'needs the {scope} scope", scope="{scope}"'
            )

            pairs = {"alice's": tokens.alice_token, "a service's": tokens.service_token}
            for case, token in pairs.items():
                answered = await call(route, token)
                assert answered.status_code == (202 if name == "POST /orders" else 200), (
                    f"{name}, {case} token: {answered.text}"
                )

            other = await call(route, tokens.bob_token)
            if name == "GET /orders/{id}":
                # Bob learns nothing: exactly the answer an unknown id gets.
                unknown = await call(("get", f"/orders/{uuid.uuid4()}", None), tokens.bob_token)
                assert_refused(other, 404, name)
                assert other.json() == unknown.json()
            else:
                assert_refused(other, 403, f"{name}, bob's token for alice")
                assert "www-authenticate" not in other.headers

        # Bob's own orders stay his to place.
        bobs = await call(("post", "/orders", order_body(bob, 4)), tokens.bob_token)
        assert bobs.status_code == 202

    # Exactly the setup's order and the accepted ones reached Kafka: no refusal produced.
    assert len(accepted) == 3
    records = await read_topic(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
    on_topic = sorted(str(contract.decode(record.value).order_id) for record in records)
    assert on_topic == sorted([alices_order, *accepted])


async def test_authentication_comes_before_reading_the_body(settings: Settings) -> None:
    not_an_order = {"customer_id": 7, "items": "none"}
    tokens = Tokens(settings, uuid.uuid4().hex[:8])
    async with api_client(settings, authenticated=False) as client:
        anonymous = await client.post("/orders", json=not_an_order)
        not_json = await client.post(
            "/orders", content=b"{nope", headers={"content-type": "application/json"}
        )
        unscoped = await client.post(
            "/orders/validate", json=not_an_order, headers=bearer(tokens.read_only)
        )
        bad_query = await client.get("/customers/x/orders", params={"limit": "many"})
        scoped = await client.post("/orders", json=not_an_order, headers=bearer(tokens.write_only))
    assert anonymous.status_code == not_json.status_code == bad_query.status_code == 401
    assert unscoped.status_code == 403
    assert scoped.status_code == 422  # with the right token, the body is judged
    assert await read_topic(settings.kafka.bootstrap_servers, settings.kafka.orders_topic) == []


async def test_two_customers_of_one_client_application_never_share_idempotency_keys(
    settings: Settings, run_id: str
) -> None:
    key = {"Idempotency-Key": "checkout-1"}
    alice = token_for(settings, f"{run_id}-alice", customer=f"{run_id}-a", client_id="web-shop")
    bob = token_for(settings, f"{run_id}-bob", customer=f"{run_id}-b", client_id="web-shop")
    async with api_client(settings, authenticated=False) as client:
        alices = await client.post(
            "/orders", json=order_body(f"{run_id}-a", 1), headers={**key, **bearer(alice)}
        )
        bobs = await client.post(
            "/orders", json=order_body(f"{run_id}-b", 2), headers={**key, **bearer(bob)}
        )
        alices_again = await client.post(
            "/orders", json=order_body(f"{run_id}-a", 1), headers={**key, **bearer(alice)}
        )
    assert alices.status_code == bobs.status_code == alices_again.status_code == 202
    assert alices.json()["order_id"] != bobs.json()["order_id"]
    assert alices_again.json()["order_id"] == alices.json()["order_id"]
    records = await read_topic(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
    assert len(records) == 2


async def test_the_probes_are_open_and_the_docs_show_the_bearer_scheme(
    settings: Settings,
) -> None:
    async with api_client(settings, authenticated=False) as client:
        probes = [await client.get(path) for path in ("/healthz", "/readyz")]
        spec = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    assert [probe.status_code for probe in probes] == [200, 200]
    assert [probe.json() for probe in probes] == [{"status": "ok"}] * 2
    assert docs.status_code == 200
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    operations = {
        ("post", "/orders"): "orders:write",
        ("post", "/orders/validate"): "orders:write",
        ("get", "/orders/{order_id}"): "orders:read",
        ("get", "/customers/{customer_id}/orders"): "orders:read",
    }
    for (method, path), scope in operations.items():
        operation = spec["paths"][path][method]
        assert operation["security"] == [{"bearerAuth": [scope]}], path
        assert {"401", "403", "429"} <= set(operation["responses"]), path
    assert "security" not in spec["paths"]["/healthz"]["get"]


async def test_serving_the_docs_is_a_setting(settings: Settings) -> None:
    api = settings.api.model_copy(update={"docs_enabled": False})
    async with api_client(settings.model_copy(update={"api": api})) as client:
        answers = [(await client.get(path)).status_code for path in ("/docs", "/redoc")]
        answers.append((await client.get("/openapi.json")).status_code)
    assert answers == [404, 404, 404]


async def test_with_authentication_off_anyone_acts_as_a_service_and_it_is_logged(
    settings: Settings, run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    auth = settings.auth.model_copy(update={"enabled": False})
    customer = f"{run_id}-c"
    with caplog.at_level(logging.WARNING, logger="app.api.authn"):
        async with api_client(
            settings.model_copy(update={"auth": auth}), authenticated=False
        ) as client:
            placed = await client.post("/orders", json=order_body(customer, 1))
            listed = await client.get(f"/customers/{customer}/orders")
    assert placed.status_code == 202
    assert listed.status_code == 200
    assert any("authentication is OFF" in record.message for record in caplog.records)


async def test_concurrent_readiness_probes_share_one_check(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/readyz is open, so a crowd of probers must not become a crowd of database connections
    and Kafka round trips (it made most probes answer 503 and tied up the pool)."""
    checks = 0
    real_check = health.dependencies_ready

    async def counted(resources: Resources) -> bool:
        nonlocal checks
        checks += 1
        return await real_check(resources)

    monkeypatch.setattr(health, "dependencies_ready", counted)
    async with api_client(settings, authenticated=False) as client:
        probes = await asyncio.gather(*(client.get("/readyz") for _ in range(300)))
        assert [probe.status_code for probe in probes] == [200] * 300
        assert all(probe.json() == {"status": "ok"} for probe in probes)
        assert 1 <= checks <= 2
        first_round = checks
        again = await client.get("/readyz")  # within the second: the last check answers
        assert again.status_code == 200
        assert checks == first_round
        await asyncio.sleep(health.READY_CACHE_S + 0.1)
        assert (await client.get("/readyz")).status_code == 200
        assert checks == first_round + 1  # then checked again


async def test_the_default_rate_limits_hold_a_customer_to_its_burst_but_not_a_service(
    settings: Settings, run_id: str
) -> None:
    """With the default limits (no override; the other tests turn them off), a service, which
    places orders for every customer, is not throttled at one customer's burst."""
    api = ApiSettings.model_construct()  # the fields' defaults: no environment, no .env
    assert (api.rate_limit_per_s, api.rate_limit_burst) == (100, 200)
    assert (api.service_rate_limit_per_s, api.service_rate_limit_burst) == (2000, 4000)
    customer = f"{run_id}-alice"
    alice = bearer(token_for(settings, f"{run_id}-alice-user", customer=customer))
    backend = bearer(token_for(settings, f"{run_id}-backend"))
    async with api_client(settings.model_copy(update={"api": api}), authenticated=False) as client:

        async def burst(headers: dict[str, str], requests: int) -> list[httpx.Response]:
            return await asyncio.gather(
                *(
                    client.post("/orders/validate", json=order_body(customer, n), headers=headers)
                    for n in range(requests)
                )
            )

        started = time.monotonic()
        answers = await burst(alice, 300)
        took_s = time.monotonic() - started
        admitted = [answer for answer in answers if answer.status_code == 200]
        refused = [answer for answer in answers if answer.status_code == 429]
        # The burst, plus what 100 a second refilled while the requests were answered.
        assert 200 <= len(admitted) <= 200 + 100 * took_s + 1, (len(admitted), took_s)
        assert len(admitted) + len(refused) == 300
        assert refused[0].headers["ratelimit-policy"] == '"client";q=200;w=2'

        # Twice a customer's burst at once: a service acts for every customer.
        assert [answer.status_code for answer in await burst(backend, 400)] == [200] * 400

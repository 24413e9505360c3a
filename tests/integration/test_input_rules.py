"""The API refuses what the pipeline cannot store, and says so with the right status."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.api.deps import Resources
from app.settings import Settings
from tests.integration.api_client import api_client, order_body
from tests.integration.kafka_tools import end_offsets
from tests.integration.waiting import eventually
from tests.integration.worker_harness import worker_running

JSON = {"content-type": "application/json"}


def with_sku(sku: str, customer_id: str = "c-1") -> dict[str, Any]:
    return order_body(customer_id, items=[{"sku": sku, "quantity": 1, "unit_price": "1.00"}])


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    return problem


def field_errors(problem: dict[str, Any]) -> list[list[Any]]:
    return [error["loc"] for error in problem["errors"]]


async def produced(settings: Settings) -> int:
    ends = await end_offsets(settings.kafka.bootstrap_servers, settings.kafka.orders_topic)
    return sum(ends.values())


async def test_a_nul_in_a_sku_is_a_field_error_and_nothing_reaches_kafka(
    settings: Settings,
) -> None:
    # The body of issue 10, byte for byte: it used to get 202 and then jam every worker.
    body = (
        b'{"customer_id":"c-1","items":[{"sku":"A\\u0000B","quantity":1,"unit_price":"1.00"}],'
        b'"currency":"EUR"}'
    )
    async with api_client(settings) as client:
        refused = assert_problem(await client.post("/orders", content=body, headers=JSON), 422)
        for control in ["\x1f", "\x7f", "\x85", "\u202e", "\u2066", "\ufeff", "\u2028"]:
            response = await client.post("/orders", json=with_sku(f"A{control}B"))
            assert field_errors(assert_problem(response, 422)) == [["body", "items", 0, "sku"]]
        dry_run = await client.post("/orders/validate", content=body, headers=JSON)
    assert field_errors(refused) == [["body", "items", 0, "sku"]]
    assert "U+0000" in refused["errors"][0]["msg"]
    assert_problem(dry_run, 422)
    assert await produced(settings) == 0


async def test_lengths_are_counted_in_characters_64_accepted_65_refused(
    settings: Settings,
) -> None:
    # 64 emoji are 256 UTF-8 bytes and 128 UTF-16 units, and still 64 characters.
    async with api_client(settings) as client:
        for sku in ["x" * 64, "\U0001f600" * 64, "é" * 64]:
            assert (await client.post("/orders/validate", json=with_sku(sku))).status_code == 200
        for sku in ["x" * 65, "\U0001f600" * 65]:
            response = await client.post("/orders/validate", json=with_sku(sku))
            assert field_errors(assert_problem(response, 422)) == [["body", "items", 0, "sku"]]
        customer = await client.post("/orders/validate", json=with_sku("a", "c" * 64))
        too_long = await client.post("/orders/validate", json=with_sku("a", "c" * 65))
        listed = await client.get(f"/customers/{'c' * 64}/orders")
        not_listed = await client.get(f"/customers/{'c' * 65}/orders")
    assert customer.status_code == 200
    assert field_errors(assert_problem(too_long, 422)) == [["body", "customer_id"]]
    assert listed.status_code == 200
    assert field_errors(assert_problem(not_listed, 422)) == [["path", "customer_id"]]


async def test_a_lone_surrogate_anywhere_is_a_422_never_a_500(settings: Settings) -> None:
    lone = "\\ud800"  # as JSON writes it; no UTF-8 encoding of it exists
    line = '{"sku":"A","quantity":1,"unit_price":"1.00"}'
    bodies = {
        "sku": f'{{"customer_id":"c-1","items":[{{"sku":"a{lone}","quantity":1,'
        f'"unit_price":"1.00"}}],"currency":"EUR"}}',
        "customer_id": f'{{"customer_id":"c{lone}","items":[{line}],"currency":"EUR"}}',
        "currency": f'{{"customer_id":"c-1","items":[{line}],"currency":"EU{lone}"}}',
        "unit_price": f'{{"customer_id":"c-1","items":[{{"sku":"A","quantity":1,'
        f'"unit_price":"1{lone}"}}],"currency":"EUR"}}',
        # In a member name: pydantic blames the whole object.
        "body": f'{{"customer_id":"c-1","items":[{line}],"currency":"EUR","b{lone}":1}}',
    }
    async with api_client(settings) as client:
        for field, body in bodies.items():
            for path in ["/orders", "/orders/validate"]:
                response = await client.post(path, content=body.encode(), headers=JSON)
                problem = assert_problem(response, 422)
                assert any(field in loc for loc in field_errors(problem)), problem["errors"]
                response.content.decode("utf-8")  # the answer itself is valid UTF-8
    assert await produced(settings) == 0


async def test_undeclared_methods_get_405_with_allow_before_any_content_type_check(
    settings: Settings,
) -> None:
    text = {"content-type": "text/plain"}
    async with api_client(settings) as client:
        put = await client.put("/orders", content=b"x", headers=text)
        patch = await client.patch(f"/orders/{uuid.uuid4()}", content=b"x", headers=text)
        post = await client.post(f"/orders/{uuid.uuid4()}", content=b"x" * 100_000, headers=text)
        still_415 = await client.post("/orders", content=b"x", headers=text)
        large_json = await client.put("/orders", content=b"[" * 100_000, headers=JSON)
        get_validate = await client.get("/orders/validate")
        bare_hex = await client.get(f"/orders/{uuid.uuid4().hex}")
    assert_problem(put, 405)
    assert put.headers["allow"] == "POST"
    assert_problem(patch, 405)
    assert patch.headers["allow"] == "GET"
    assert_problem(post, 405)  # neither 415 nor 413: there is no such operation
    assert_problem(still_415, 415)
    assert_problem(large_json, 405)
    # Not GET /orders/{order_id} with a bad id: the route takes only a canonical UUID.
    assert_problem(get_validate, 405)
    assert get_validate.headers["allow"] == "POST"
    assert_problem(bare_hex, 404)


async def test_a_body_that_is_not_json_or_not_utf8_is_a_400_problem(settings: Settings) -> None:
    async with api_client(settings) as client:
        not_json = await client.post("/orders", content=b'{"customer_id": ', headers=JSON)
        not_utf8 = await client.post("/orders", content=b'{"customer_id": "\xff"}', headers=JSON)
        dry_run = await client.post("/orders/validate", content=b"{nope", headers=JSON)
        body = json.dumps(with_sku("a"))
        # json.loads would take all of these: UTF-16 and UTF-32 (it guesses), a surrogate
        # encoded in UTF-8 ("surrogatepass"), NaN; none is JSON in UTF-8.
        for encoding in ["utf-16", "utf-16-le", "utf-32"]:
            as_other = await client.post(
                "/orders/validate", content=body.encode(encoding), headers=JSON
            )
            assert_problem(as_other, 400)
        encoded_surrogate = body.replace('"a"', '"a\xed\xa0\x80"').encode("latin-1")
        nan = body.replace('"quantity": 1', '"quantity": NaN').encode()
        bom = b"\xef\xbb\xbf" + body.encode()
        with_bom = await client.post("/orders/validate", content=bom, headers=JSON)
        for content in [encoded_surrogate, nan]:
            refused = await client.post("/orders/validate", content=content, headers=JSON)
            assert_problem(refused, 400)
        spec = (await client.get("/openapi.json")).json()
    assert_problem(not_json, 400)
    assert_problem(not_utf8, 400)
    assert_problem(dry_run, 400)
    assert with_bom.status_code == 200  # RFC 8259 lets a parser ignore a byte order mark
    assert "400" in spec["paths"]["/orders"]["post"]["responses"]
    assert "400" in spec["paths"]["/orders/validate"]["post"]["responses"]
    assert await produced(settings) == 0


async def test_prices_are_exact_decimal_strings_as_the_schema_says(settings: Settings) -> None:
    def priced(price: object) -> dict[str, Any]:
        return order_body("c-1", items=[{"sku": "a", "quantity": 2, "unit_price": price}])

    async with api_client(settings) as client:
        accepted = [
            (await client.post("/orders/validate", json=priced(price))).json()["total"]
            for price in ["0", "0.10", "007.5", "9999999999.9999"]
        ]
        for price in [1.5, 2, "1e2", "-1", "+1", "1.", ".5", " 1", "1.00001", "12345678901", "NaN"]:
            response = await client.post("/orders/validate", json=priced(price))
            assert_problem(response, 422)
        schema = (await client.get("/openapi.json")).json()["components"]["schemas"]
    assert accepted == ["0", "0.20", "15.0", "19999999999.9998"]
    assert schema["OrderLine"]["properties"]["unit_price"]["type"] == "string"


async def test_a_pool_timeout_on_a_read_is_a_503_with_retry_after(
    settings: Settings, database_url: str
) -> None:
    tiny = create_async_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        async with api_client(settings) as client:
            transport = client._transport
            assert isinstance(transport, httpx.ASGITransport)
            state = transport.app.state  # type: ignore[attr-defined]
            resources: Resources = state.resources
            state.resources = dataclasses.replace(resources, engine=tiny)
            order = f"/orders/{uuid.uuid4()}"
            async with tiny.connect():  # the pool's only connection, held
                busy = await client.get(order)
                busy_list = await client.get("/customers/c-1/orders")
            free = await client.get(order)
    finally:
        await tiny.dispose()
    for response in (busy, busy_list):
        assert_problem(response, 503)
        assert response.headers["retry-after"] == str(settings.api.retry_after_s)
        assert "TimeoutError" in response.json()["detail"]
    assert_problem(free, 404)


async def test_whatever_is_accepted_is_stored_as_sent(
    settings: Settings, engine: AsyncEngine
) -> None:
    skus = [
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # family: emoji joined by ZWJ
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian with a ZWNJ
        "\u05e9\u05dc\u05d5\u05dd \u200fRTL",  # Hebrew and a right-to-left mark
        "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",  # tag flag
        "soft\u00adhyphen",
        "\ue000\uffff\U0010fffd",  # private use, noncharacter, last plane
        "\U0001f600" * 64,
        " leading and trailing ",
    ]
    async with api_client(settings) as client:
        ids = []
        for n, sku in enumerate(skus):
            response = await client.post("/orders", json=with_sku(sku, f"store-{n}"))
            assert response.status_code == 202, response.text
            ids.append(response.json()["order_id"])
        async with worker_running(settings, engine) as worker:
            assert await eventually(lambda: worker.stats.inserted == len(skus), timeout=60)
        stored = [(await client.get(f"/orders/{order_id}")).json() for order_id in ids]
    assert [order["items"][0]["sku"] for order in stored] == skus

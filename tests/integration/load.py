"""Clients that place orders the way the guarantees are stated: each customer sequentially."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from app.settings import Settings
from tests.integration.api_client import api_client, order_body
from tests.integration.oracle import Expectations


def customers_for(run: str, count: int) -> list[str]:
    return [f"{run}-c{n:04d}" for n in range(count)]


async def place_orders(
    client: httpx.AsyncClient,
    expected: Expectations,
    customers: list[str],
    per_customer: int,
    *,
    concurrency: int = 50,
    retry_unavailable: bool = False,
    keyed: bool = True,
) -> None:
    """Each customer sends its orders one after another, with an Idempotency-Key each unless
    `keyed` is false (a keyed order needs PostgreSQL; an unkeyed one never touches it)."""
    gate = asyncio.Semaphore(concurrency)

    async def one_customer(customer: str) -> None:
        for n in range(per_customer):
            key = f"{customer}-{n}"
            headers = {"Idempotency-Key": key} if keyed else {}
            while True:
                async with gate:
                    response = await client.post(
                        "/orders", json=order_body(customer, n), headers=headers
                    )
                if response.status_code == 202:
                    expected.accept(customer, uuid.UUID(response.json()["order_id"]))
                    break
                # 409: the key's earlier attempt is still being answered.
                assert response.status_code in (503, 409), response.text
                if not retry_unavailable:
                    expected.refused.append((customer, key if keyed else None))
                    break
                await asyncio.sleep(0.2)

    await asyncio.gather(*(one_customer(customer) for customer in customers))


async def orders_accepted(
    settings: Settings, customers: list[str], per_customer: int, **options: Any
) -> Expectations:
    """Place orders through the real API (in-process) and return what the clients were told."""
    expected = Expectations()
    async with api_client(settings) as client:
        await place_orders(client, expected, customers, per_customer, **options)
    return expected

"""Per-tenant budgets: reserve at admission, settle at completion, 402 when it does not fit."""

from __future__ import annotations

import concurrent.futures
from decimal import Decimal

import httpx

from tests.conftest import LiveServer

BODY = {"model": "tiny-gpt", "prompt": "hello", "max_tokens": 4}


def call(live: LiveServer, tenant: str = "alpha") -> httpx.Response:
    return httpx.post(
        live.url + "/v1/completions",
        json=BODY,
        headers={"authorization": f"Bearer {live.keys[tenant]}"},
        timeout=60,
    )


def test_over_budget_is_402_and_free(fake_server: LiveServer) -> None:
    """A tenant with a zero budget gets a 402 naming the budget; nothing is recorded."""
    store = fake_server.service.store
    store.set_budget(fake_server.tenant_ids["alpha"], Decimal("0"))
    fake_server.service.budgets.refresh(fake_server.tenant_ids["alpha"])
    before = store.ledger_size()
    resp = call(fake_server)
    assert resp.status_code == 402
    assert "budget" in resp.json()["error"]["message"]
    assert store.ledger_size() == before
    assert call(fake_server, "beta").status_code == 200


def test_concurrent_requests_cannot_overshoot(fake_server: LiveServer) -> None:
    """Many concurrent requests against a small budget: spent never exceeds the limit."""
    svc = fake_server.service
    tenant = fake_server.tenant_ids["alpha"]
    first = call(fake_server).json()["usage"]["metering"]
    one = Decimal(first["cost"])
    limit = svc.budgets.snapshot(tenant)[1] + one * 6
    svc.store.set_budget(tenant, limit)
    svc.budgets.refresh(tenant)
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda _: call(fake_server).status_code, range(24)))
    assert set(codes) <= {200, 402} and 402 in codes and 200 in codes
    svc.store.flush()
    assert svc.store.spent(tenant) <= limit

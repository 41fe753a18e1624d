"""Tenant endpoints: each tenant sees only its own usage, records and invoices."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import httpx

from tests.conftest import LiveServer


def get(live: LiveServer, path: str, tenant: str = "alpha", **params: str | int) -> httpx.Response:
    return httpx.get(
        live.url + path, params=params, headers={"authorization": f"Bearer {live.keys[tenant]}"}, timeout=30
    )


def spend(live: LiveServer, tenant: str, n: int, tier: str = "default") -> list[str]:
    client = live.client(tenant)
    ids = []
    for i in range(n):
        resp = client.completions.create(
            model="tiny-gpt", prompt=f"p{i}", max_tokens=2 + i, extra_body={"service_tier": tier}
        )
        ids.append(resp.usage.model_extra["metering"]["record_id"])
    return ids


def test_two_tenants_see_only_their_own_usage(fake_server: LiveServer) -> None:
    """alpha's and beta's summaries, record lists and record lookups never mix."""
    a_ids = spend(fake_server, "alpha", 3)
    b_ids = spend(fake_server, "beta", 2)
    a_rows = get(fake_server, "/v1/usage").json()
    b_rows = get(fake_server, "/v1/usage", tenant="beta").json()
    assert sum(r["requests"] for r in a_rows["data"]) == 3
    assert sum(r["requests"] for r in b_rows["data"]) == 2
    a_list = {r["record_id"] for r in get(fake_server, "/v1/usage/records").json()["data"]}
    assert a_list == set(a_ids)
    assert get(fake_server, f"/v1/usage/records/{b_ids[0]}").status_code == 404
    assert (
        get(fake_server, f"/v1/usage/records/{a_ids[0]}").json()["tenant_id"]
        == fake_server.tenant_ids["alpha"]
    )


def test_group_by_tier_and_model(fake_server: LiveServer) -> None:
    """group_by=tier splits default and flex; group_by=model names the model."""
    spend(fake_server, "alpha", 2)
    spend(fake_server, "alpha", 1, tier="flex")
    tiers = {r["key"]: r["requests"] for r in get(fake_server, "/v1/usage", group_by="tier").json()["data"]}
    assert tiers == {"default": 2, "flex": 1}
    models = get(fake_server, "/v1/usage", group_by="model").json()["data"]
    assert [m["key"] for m in models] == ["tiny-gpt"]
    bad = get(fake_server, "/v1/usage", group_by="week")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"


def test_records_are_paged(fake_server: LiveServer) -> None:
    """Pages of records follow each other without gaps or repeats."""
    ids = spend(fake_server, "alpha", 5)
    seen: list[str] = []
    after = None
    while True:
        params = {"limit": "2"}
        if after is not None:
            params["after"] = after
        page = get(fake_server, "/v1/usage/records", **params).json()
        seen += [r["record_id"] for r in page["data"]]
        if not page["has_more"]:
            break
        after = page["next_after"]
    assert seen == ids


def test_invoice_total_equals_sum_of_record_costs(fake_server: LiveServer) -> None:
    """The invoice's exact total is the Σ of its records' costs, and lines round half-up once."""
    spend(fake_server, "alpha", 4)
    spend(fake_server, "alpha", 2, tier="flex")
    period = datetime.now(UTC).strftime("%Y-%m")
    inv = get(fake_server, f"/v1/invoices/{period}").json()
    records = get(fake_server, "/v1/usage/records", limit=100).json()["data"]
    exact = sum((Decimal(r["cost"]) for r in records), start=Decimal(0))
    assert Decimal(inv["exact_total"]) == exact
    csv_text = get(fake_server, f"/v1/invoices/{period}", format="csv").text
    assert "tiny-gpt" in csv_text


def test_warmup_is_on_no_tenant_bill(fake_server: LiveServer) -> None:
    """Warm-up steps are in the ledger as platform overhead with zero cost, never a tenant's."""
    store = fake_server.service.store
    rows = store.list_records(None, include_warmup=True)
    warm = [r for _, r in rows if r.warmup]
    assert warm and all(r.cost == 0 and r.tenant_id == "platform" and r.device_us > 0 for r in warm)
    spend(fake_server, "alpha", 1)
    mine = get(fake_server, "/v1/usage/records").json()["data"]
    assert not any(r["warmup"] for r in mine)

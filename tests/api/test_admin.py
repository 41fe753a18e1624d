"""Operator endpoints need an admin key; usage exports are CloudEvents 1.0 JSON lines."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import pytest

from infermeter.api import admin
from infermeter.core.records import CLOUDEVENT_TYPE, UsageRecord
from tests.conftest import LiveServer

ADMIN_PATHS = ("/v1/admin/usage", "/v1/admin/overview", "/v1/admin/export/usage.jsonl")


def get(live: LiveServer, path: str, key: str | None, **params: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.get(live.url + path, params=params, headers=headers, timeout=30)


def spend(live: LiveServer, tenant: str, n: int, tier: str = "default") -> list[str]:
    client = live.client(tenant)
    ids = []
    for i in range(n):
        resp = client.completions.create(
            model="tiny-gpt", prompt=f"p{i}", max_tokens=2 + i, extra_body={"service_tier": tier}
        )
        assert resp.usage is not None and resp.usage.model_extra is not None
        ids.append(resp.usage.model_extra["metering"]["record_id"])
    return ids


def events(resp: httpx.Response) -> list[dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in resp.text.splitlines()]


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_admin_endpoints_refuse_tenant_keys_and_no_key(fake_server: LiveServer, path: str) -> None:
    """A tenant key gets 403 naming the admin key it needs; no key gets 401."""
    denied = get(fake_server, path, fake_server.keys["alpha"])
    assert denied.status_code == 403
    assert denied.json()["error"]["type"] == "permission_error"
    assert "admin key" in denied.json()["error"]["message"]
    assert get(fake_server, path, None).status_code == 401
    assert get(fake_server, path, fake_server.admin_key).status_code == 200


def test_admin_usage_by_tenant_totals_each_tenant(fake_server: LiveServer) -> None:
    """group_by=tenant has one row per tenant with its own requests and exact cost."""
    spend(fake_server, "alpha", 3)
    spend(fake_server, "beta", 2, tier="flex")
    body = get(fake_server, "/v1/admin/usage", fake_server.admin_key).json()
    rows = {r["name"]: r for r in body["data"]}
    assert {n: r["requests"] for n, r in rows.items()} == {"alpha": 3, "beta": 2}
    for name in ("alpha", "beta"):
        own = get(fake_server, "/v1/usage", fake_server.keys[name], group_by="tier").json()
        assert Decimal(rows[name]["cost"]) == Decimal(own["total_cost"])
        assert rows[name]["key"] == fake_server.tenant_ids[name]
    assert Decimal(body["total_cost"]) == sum(Decimal(r["cost"]) for r in body["data"])
    tiers = get(fake_server, "/v1/admin/usage", fake_server.admin_key, group_by="tier").json()
    assert {r["key"]: r["requests"] for r in tiers["data"]} == {"default": 3, "flex": 2}
    bad = get(fake_server, "/v1/admin/usage", fake_server.admin_key, group_by="week")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"


def test_overview_splits_device_time_and_lists_engines(fake_server: LiveServer) -> None:
    """Billed device time equals the ledger's; warm-up is counted apart and never billed."""
    spend(fake_server, "alpha", 2)
    ov = get(fake_server, "/v1/admin/overview", fake_server.admin_key).json()
    [engine] = ov["engines"]
    assert engine["engine_id"] == "fake-engine" and engine["backend"] == "fake"
    assert engine["precision"] == "fp32" and engine["device"] == "cpu"
    used = engine["device_ms"]
    assert used["warmup"] > 0 and used["warmup"] == pytest.approx(engine["ledger_warmup_ms"])
    billed = sum(
        float(r["device_ms"]) for r in get(fake_server, "/v1/usage", fake_server.keys["alpha"]).json()["data"]
    )
    assert used["billed"] == pytest.approx(billed)
    assert used["busy"] == pytest.approx(used["billed"] + used["warmup"] + used["unattributed"])
    assert ov["device_ms"]["billed"] == pytest.approx(used["billed"])
    assert 0 < engine["utilization"] == pytest.approx(used["busy"] / (ov["uptime_s"] * 1000))
    assert ov["tenants"] == 2 and ov["queue_depth"] == 0


def test_admin_export_is_cloudevents_with_the_record_ids(fake_server: LiveServer) -> None:
    """Every tenant's records, in ledger order, one CloudEvent 1.0 per line; warm-up left out."""
    ids = spend(fake_server, "alpha", 2) + spend(fake_server, "beta", 2)
    lines = events(get(fake_server, "/v1/admin/export/usage.jsonl", fake_server.admin_key))
    assert [e["id"] for e in lines] == ids
    for event in lines:
        assert event["specversion"] == "1.0" and event["type"] == CLOUDEVENT_TYPE
        assert event["source"] and event["time"].endswith("Z")
        assert event["subject"] == event["data"]["tenant_id"]
        assert UsageRecord.from_cloudevent(event).to_cloudevent() == event
    beta = events(get(fake_server, "/v1/admin/export/usage.jsonl", fake_server.admin_key, tenant="beta"))
    assert [e["id"] for e in beta] == ids[2:]
    warm = events(
        get(fake_server, "/v1/admin/export/usage.jsonl", fake_server.admin_key, include_warmup="true")
    )
    assert [e["data"]["warmup"] for e in warm].count(True) == 1
    missing = get(fake_server, "/v1/admin/export/usage.jsonl", fake_server.admin_key, tenant="nope")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]


def test_export_pages_through_more_than_one_page(
    fake_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream reads the ledger a page at a time without gaps or repeats."""
    monkeypatch.setattr(admin, "EXPORT_PAGE", 2)
    ids = spend(fake_server, "alpha", 5)
    lines = events(get(fake_server, "/v1/usage/export.jsonl", fake_server.keys["alpha"]))
    assert [e["id"] for e in lines] == ids


def test_tenant_export_holds_only_the_callers_records(fake_server: LiveServer) -> None:
    """A tenant's export never holds another tenant's events; an admin key has no tenant."""
    a_ids = spend(fake_server, "alpha", 2)
    spend(fake_server, "beta", 3)
    lines = events(get(fake_server, "/v1/usage/export.jsonl", fake_server.keys["alpha"]))
    assert [e["id"] for e in lines] == a_ids
    assert {e["subject"] for e in lines} == {fake_server.tenant_ids["alpha"]}
    assert get(fake_server, "/v1/usage/export.jsonl", fake_server.admin_key).status_code == 403
    bad = get(fake_server, "/v1/usage/export.jsonl", fake_server.keys["alpha"], start="yesterday")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "start"


def test_recent_is_newest_first_and_own_only(
    fake_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/v1/usage/recent gives the caller's newest records first, however sparse in the ledger."""
    a_ids = spend(fake_server, "alpha", 3)
    spend(fake_server, "beta", 6)
    monkeypatch.setattr(admin, "RECENT_WINDOW", 2)  # force several widening looks
    recent = get(fake_server, "/v1/usage/recent", fake_server.keys["alpha"], limit=2).json()
    assert [r["record_id"] for r in recent["data"]] == a_ids[::-1][:2]
    everything = get(fake_server, "/v1/usage/recent", fake_server.keys["alpha"], limit=50).json()
    assert [r["record_id"] for r in everything["data"]] == a_ids[::-1]


def test_metrics_expose_engines_and_start_time(fake_server: LiveServer) -> None:
    """/metrics carries the engine list and the start time the operator view is built from."""
    admin = {"authorization": f"Bearer {fake_server.admin_key}"}
    text = httpx.get(fake_server.url + "/metrics", headers=admin, timeout=30).text
    assert 'infermeter_engine_info{backend="fake",device="cpu",engine="fake-engine"' in text
    assert "infermeter_start_time_seconds " in text
    assert 'infermeter_engine_device_ms_total{engine="fake-engine",use="warmup"}' in text

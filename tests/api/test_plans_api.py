"""Plans through the real API: every record and response names what priced it; an invoice
spanning a plan change shows both versions."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx

from tests.conftest import LiveServer


def admin(live: LiveServer, method: str, path: str, **body: object) -> httpx.Response:
    return httpx.request(
        method, live.url + path, json=body or None, timeout=30,
        headers={"authorization": f"Bearer {live.admin_key}"},
    )  # fmt: skip


def complete(live: LiveServer, tenant: str = "alpha") -> httpx.Response:
    return httpx.post(
        live.base_url + "/completions",
        json={"model": "tiny-gpt", "prompt": "hello", "max_tokens": 3},
        headers={"authorization": f"Bearer {live.keys[tenant]}"},
        timeout=60,
    )


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def test_a_response_names_its_price_point_and_multiplier(fake_server: LiveServer) -> None:
    """Headers and usage.metering carry the plan version, price point and multiplier."""
    made = admin(fake_server, "POST", "/v1/admin/plans", name="gold", currency="USD",
                 per_1000_ru={"default": "0.0050", "flex": "0.0020"})  # fmt: skip
    assert made.status_code == 201, made.text
    assert admin(fake_server, "POST", "/v1/admin/plans/gold/assign", tenant="alpha").status_code == 201
    resp = complete(fake_server)
    assert resp.status_code == 200, resp.text
    metering = resp.json()["usage"]["metering"]
    assert resp.headers["x-infermeter-price-point"] == "gold.v1:default:x1" == metering["price_point"]
    assert resp.headers["x-infermeter-price-multiplier"] == "1" == metering["multiplier"]
    assert metering["price_plan_version"] == "gold.v1"
    assert Decimal(metering["cost"]) == Decimal(metering["ru"]) * Decimal("0.0050") / 1000
    other = complete(fake_server, "beta").json()["usage"]["metering"]  # unassigned: the default plan
    assert other["price_plan_version"] == fake_server.service.plan.version


def test_a_plan_change_applies_from_its_time_and_the_invoice_shows_both(fake_server: LiveServer) -> None:
    """Requests before v2's effective time keep v1's price; the month's invoice has a line each."""
    admin(
        fake_server, "POST", "/v1/admin/plans", name="gold", currency="USD", per_1000_ru={"default": "0.0050"}
    )
    admin(fake_server, "POST", "/v1/admin/plans/gold/assign", tenant="alpha")
    at = datetime.now(UTC) + timedelta(seconds=1)
    v2 = admin(fake_server, "POST", "/v1/admin/plans", name="gold", currency="USD",
               per_1000_ru={"default": "0.0100"}, effective_from=iso(at))  # fmt: skip
    assert v2.json()["version_id"] == "gold.v2"
    before = complete(fake_server).json()["usage"]["metering"]
    time.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()) + 0.05)
    after = complete(fake_server).json()["usage"]["metering"]
    assert (before["price_plan_version"], after["price_plan_version"]) == ("gold.v1", "gold.v2")
    period = datetime.now(UTC).strftime("%Y-%m")
    inv = httpx.get(
        f"{fake_server.base_url}/invoices/{period}",
        headers={"authorization": f"Bearer {fake_server.keys['alpha']}"}, timeout=30,
    ).json()  # fmt: skip
    versions = [line["price_plan_version"] for line in inv["lines"]]
    assert versions == ["gold.v1", "gold.v2"]
    assert [line["exact_amount"] for line in inv["lines"]] == [before["cost"], after["cost"]]


def test_a_past_effective_time_is_a_400_naming_the_field(fake_server: LiveServer) -> None:
    """Repricing the past is refused with a message that says why and what to send."""
    past = iso(datetime.now(UTC) - timedelta(hours=1))
    resp = admin(fake_server, "POST", "/v1/admin/plans", name="gold", currency="USD",
                 per_1000_ru={"default": "0.005"}, effective_from=past)  # fmt: skip
    assert resp.status_code == 400
    assert (
        resp.json()["error"]["param"] == "effective_from"
        and "retroactively" in resp.json()["error"]["message"]
    )
    bad = admin(
        fake_server, "POST", "/v1/admin/plans", name="gold", currency="USD", per_1000_ru={"turbo": "1"}
    )
    assert bad.status_code == 400 and "turbo" in bad.json()["error"]["message"]


def test_a_tenant_sees_its_plan_and_not_the_admin_routes(fake_server: LiveServer) -> None:
    """GET /v1/plan shows the caller's plan; the admin routes answer a tenant key with 403."""
    admin(
        fake_server, "POST", "/v1/admin/plans", name="gold", currency="USD", per_1000_ru={"default": "0.005"}
    )
    admin(fake_server, "POST", "/v1/admin/plans/gold/assign", tenant="alpha")
    headers = {"authorization": f"Bearer {fake_server.keys['alpha']}"}
    mine = httpx.get(fake_server.url + "/v1/plan", headers=headers, timeout=30).json()
    assert mine["current"]["version"] == "gold.v1"
    assert mine["price_points"]["default"]["price_point"] == "gold.v1:default:x1"
    assert httpx.get(fake_server.url + "/v1/admin/plans", headers=headers, timeout=30).status_code == 403

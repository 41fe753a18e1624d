"""service_tier "priority" through the real API: echoed, priced at the plan's priority price,
refused with a 400 naming the tier and the fix when the tenant's plan has no such price."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import httpx
import openai
import pytest

from tests.conftest import LiveServer

HELLO = [{"role": "user", "content": "hello"}]


def admin(live: LiveServer, path: str, **body: object) -> httpx.Response:
    return httpx.post(
        live.url + path, json=body, timeout=30, headers={"authorization": f"Bearer {live.admin_key}"}
    )


def test_priority_is_echoed_and_priced_at_the_priority_price(fake_server: LiveServer) -> None:
    """The official client's service_tier="priority" comes back, priced at 0.0040 per 1,000 RU."""
    raw = fake_server.client().chat.completions.with_raw_response.create(
        model="tiny-gpt", messages=HELLO, max_tokens=3, service_tier="priority"
    )
    resp = raw.parse()
    assert resp.service_tier == "priority"
    metering = resp.usage.model_extra["metering"]
    assert metering["price_point"] == f"{fake_server.service.plan.version}:priority:x1"
    assert raw.headers["x-infermeter-price-point"] == metering["price_point"]
    assert Decimal(metering["cost"]) == Decimal(metering["ru"]) * Decimal("0.0040") / 1000


def test_a_plan_without_a_priority_price_refuses_priority_with_400(fake_server: LiveServer) -> None:
    """A 400 names service_tier, the tier, the plan's tiers and the fix; default still works."""
    admin(fake_server, "/v1/admin/plans", name="basic", currency="USD", per_1000_ru={"default": "0.0030"})
    assert admin(fake_server, "/v1/admin/plans/basic/assign", tenant="alpha").status_code == 201
    client = fake_server.client()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="tiny-gpt", messages=HELLO, max_tokens=2, service_tier="priority"
        )
    body = err.value.body
    assert isinstance(body, dict)
    assert body["param"] == "service_tier" and body["code"] == "service_tier_unavailable"
    assert "'priority'" in body["message"] and "basic.v1 prices only default" in body["message"]
    assert "--price priority=" in body["message"]
    ok = client.completions.create(model="tiny-gpt", prompt="hi", max_tokens=2)
    assert ok.usage.model_extra["metering"]["price_plan_version"] == "basic.v1"


def test_the_invoice_has_a_priority_line(fake_server: LiveServer) -> None:
    """Priority usage is invoiced on its own line, naming the tier."""
    client = fake_server.client()
    client.chat.completions.create(model="tiny-gpt", messages=HELLO, max_tokens=2, service_tier="priority")
    client.completions.create(model="tiny-gpt", prompt="a", max_tokens=2)
    period = datetime.now(UTC).strftime("%Y-%m")
    inv = httpx.get(
        f"{fake_server.base_url}/invoices/{period}", timeout=30,
        headers={"authorization": f"Bearer {fake_server.keys['alpha']}"},
    ).json()  # fmt: skip
    tiers = sorted(line["service_tier"] for line in inv["lines"] if line["kind"] == "usage")
    assert tiers == ["default", "priority"]

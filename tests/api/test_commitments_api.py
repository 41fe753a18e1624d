"""Reserved capacity through the real API: an admin adds a commitment, the tenant sees its use,
and the month's invoice equals one rebuilt from the ledger rows and stored commitments alone."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import httpx

from infermeter.billing.invoices import build_invoice, invoice_to_json
from infermeter.billing.ledger import record_from_payload
from infermeter.billing.reservations import COMMITMENT_COLUMNS, commitment_from_row
from tests.conftest import LiveServer

HELLO = [{"role": "user", "content": "hello"}]


def call(live: LiveServer, method: str, path: str, key: str, **body: object) -> httpx.Response:
    return httpx.request(
        method, live.url + path, json=body or None, timeout=30, headers={"authorization": f"Bearer {key}"}
    )


def test_a_commitment_is_stored_and_listed(fake_server: LiveServer) -> None:
    """POST /v1/admin/commitments answers 201; the tenant's /v1/commitments shows it and its use."""
    made = call(fake_server, "POST", "/v1/admin/commitments", fake_server.admin_key,
                tenant="alpha", ru_per_month="1000000", per_1000_ru="0.0015")  # fmt: skip
    assert made.status_code == 201, made.text
    assert made.json()["tier"] == "default" and made.json()["end_at"] is None
    now = datetime.now(UTC)
    assert fake_server.service.prices.weight(made.json()["tenant_id"], now) == 2  # fair-share weight
    fake_server.client().chat.completions.create(model="tiny-gpt", messages=HELLO, max_tokens=2)
    mine = call(fake_server, "GET", "/v1/commitments", fake_server.keys["alpha"]).json()
    assert [c["ru_per_month"] for c in mine["data"]] == ["1000000"]
    use = mine["this_period"][0]
    assert float(use["covered_ru"]) > 0 and use["effective_ru"] != "1000000"  # prorated from now
    other = call(fake_server, "GET", "/v1/commitments", fake_server.keys["beta"]).json()
    assert other["data"] == []
    assert fake_server.service.prices.weight(other["tenant_id"], now) == 1


def test_bad_commitments_get_named_400s_and_unknown_tenants_404(fake_server: LiveServer) -> None:
    """A past start_at or a non-number names the field; an unknown tenant is a 404."""
    admin = fake_server.admin_key
    past = call(fake_server, "POST", "/v1/admin/commitments", admin, tenant="alpha",
                ru_per_month="10", per_1000_ru="0.001", start_at="2020-01-01T00:00:00Z")  # fmt: skip
    assert past.status_code == 400 and past.json()["error"]["param"] == "start_at"
    nan = call(fake_server, "POST", "/v1/admin/commitments", admin, tenant="alpha",
               ru_per_month="lots", per_1000_ru="0.001")  # fmt: skip
    assert nan.status_code == 400 and nan.json()["error"]["param"] == "ru_per_month"
    nobody = call(fake_server, "POST", "/v1/admin/commitments", admin, tenant="nobody",
                  ru_per_month="10", per_1000_ru="0.001")  # fmt: skip
    assert nobody.status_code == 404


def test_the_invoice_is_rebuilt_from_the_ledger_and_stored_commitments(fake_server: LiveServer) -> None:
    """Ledger payloads + commitments rows -> build_invoice equals GET /v1/invoices/{period}."""
    call(fake_server, "POST", "/v1/admin/commitments", fake_server.admin_key,
         tenant="alpha", ru_per_month="5", per_1000_ru="0.0010")  # fmt: skip
    client = fake_server.client()
    for tier in ("default", "default", "priority", "flex"):
        client.chat.completions.create(model="tiny-gpt", messages=HELLO, max_tokens=3, service_tier=tier)
    period = datetime.now(UTC).strftime("%Y-%m")
    served = call(fake_server, "GET", f"/v1/invoices/{period}", fake_server.keys["alpha"]).json()
    kinds = [line["kind"] for line in served["lines"]]
    assert {"commitment_used", "commitment_unused", "commitment_coverage"} <= set(kinds)

    tenant = served["tenant_id"]
    db = sqlite3.connect(fake_server.service.store.path)  # type: ignore[attr-defined]
    try:
        records = [record_from_payload(p) for (p,) in db.execute("SELECT payload FROM ledger ORDER BY seq")]
        held = [commitment_from_row(r) for r in db.execute(f"SELECT {COMMITMENT_COLUMNS} FROM commitments")]
    finally:
        db.close()
    rebuilt = build_invoice(tenant, period, records, served["currency"], held)
    assert invoice_to_json(rebuilt) == served

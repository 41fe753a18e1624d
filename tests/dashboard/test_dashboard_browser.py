"""The dashboard in a real browser: Playwright driving Debian's Chromium against a live server.

Screenshots go to ``$INFERMETER_SCREENSHOTS`` when set (to look at the design), else to the
test's temporary directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from infermeter.app.service import Service
from infermeter.billing.receipts import verify_receipt
from infermeter.billing.signing import keys_from_document
from infermeter.core.ids import record_id, request_id
from infermeter.core.records import UsageRecord
from infermeter.core.types import Precision, ServiceTier, Status
from infermeter.runtime.fake_engine import FakeCost, FakeEngine, fake_engine_info
from tests.conftest import LiveServer, fake_service

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"{CHROMIUM} is missing: apt-get install chromium (scripts/test.sh does it when run as root)",
    ),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is missing: pip install 'infermeter[test]'"
)

# Device time like a small GPU model's, so the charts show readable numbers.
COST = FakeCost(fixed_us=4000, per_prefill_token_us=300, per_decode_token_us=2500)


def _service(home: Path) -> Service:
    fp32 = FakeEngine(cost=COST)
    int8 = FakeEngine(
        info=fake_engine_info(engine_id="fake-int8", precision=Precision.INT8),
        cost=FakeCost(fixed_us=2500, per_prefill_token_us=150, per_decode_token_us=1200),
    )
    return fake_service(home, fp32, int8)


def _history(svc: Service, tenant_id: str, days_ago: int, n: int) -> list[UsageRecord]:
    """Records as the pipeline would have written them ``days_ago`` days back."""
    out = []
    for i in reversed(range(n)):  # oldest first
        tier = ServiceTier.FLEX if i % 3 == 2 else ServiceTier.DEFAULT
        prefill_us, decode_us = 3000 + 500 * i, 20000 + 1500 * (days_ago + i)
        ru = svc.ru_table.ru_micros("cpu", Precision.FP32, prefill_us, decode_us)
        ended = datetime.now(UTC) - timedelta(days=days_ago, minutes=5 * i)
        out.append(
            UsageRecord(
                record_id=record_id(),
                request_id=request_id(),
                tenant_id=tenant_id,
                model="tiny-gpt",
                engine_id="fake-engine",
                device="cpu",
                precision=Precision.FP32,
                service_tier=tier,
                status=Status.COMPLETED,
                prompt_tokens=40 + 7 * i,
                completion_tokens=20 + days_ago,
                cached_tokens=0,
                device_us=prefill_us + decode_us,
                prefill_us=prefill_us,
                decode_us=decode_us,
                kv_mb_s=Decimal("0.5"),
                ru_micros=ru,
                cost=svc.plan.cost(ru, tier),
                currency=svc.plan.currency,
                queue_ms=1,
                latency_ms=30,
                started_at=ended,
                ended_at=ended,
                cost_model_version="token-proportional-v1",
                ru_table_version=svc.ru_table.version,
                price_plan_version=svc.plan.version,
            )
        )
    return out


@pytest.fixture
def live(server_factory: Callable[..., LiveServer], tmp_path: Path) -> LiveServer:
    """A server with two tenants: a week of history each, plus live requests on two tiers."""
    server = server_factory(_service(tmp_path / "home"))
    svc = server.service
    for days in range(6, 0, -1):  # oldest first, as a ledger fills
        svc.store.append(_history(svc, server.tenant_ids["alpha"], days, 1 + days % 3))
        svc.store.append(_history(svc, server.tenant_ids["beta"], days, 3))
    for tenant, n in (("alpha", 4), ("beta", 3)):
        client = server.client(tenant)
        for i in range(n):
            client.completions.create(
                model="tiny-gpt",
                prompt=f"{tenant} request {i}",
                max_tokens=4 + i,
                extra_body={"service_tier": "flex" if i == 1 else "default"},
            )
    return server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("INFERMETER_SCREENSHOTS", tmp_path / "shots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _get(live: LiveServer, path: str, key: str) -> Any:
    resp = httpx.get(live.url + path, headers={"authorization": f"Bearer {key}"}, timeout=30)
    resp.raise_for_status()
    return resp.json()


def _open(
    browser: Any, live: LiveServer, key: str, width: int = 1280, height: int = 900
) -> tuple[Any, list[str]]:
    """A fresh tab signed in with ``key``, and the console errors it logs (CSP ones included)."""
    page = browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on(
        "console",
        lambda m: errors.append(f"{m.text} {m.location.get('url', '')}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(live.url + "/dashboard")
    page.fill("#api-key", key)
    page.click("#signin-submit")
    return page, errors


def _unexpected(errors: list[str]) -> list[str]:
    """Console errors other than the one designed probe: the tenant view's 403 from
    /v1/admin/overview. CSP violations count."""
    expected = (("403 (Forbidden) http://127.0.0.1:", "/v1/admin/overview"),)
    return [e for e in errors if not any(a in e and b in e for a, b in expected)]


def _dataset(page: Any, canvas: str, index: int = 0) -> list[float | None]:
    return list(page.evaluate("([id, i]) => Chart.getChart(id).data.datasets[i].data", [canvas, index]))


def _labels(page: Any, canvas: str) -> list[str]:
    return list(page.evaluate("id => Chart.getChart(id).data.labels", canvas))


def _inked_pixels(page: Any, canvas: str) -> int:
    """Pixels of the canvas that are not transparent: a blank chart has none."""
    return int(
        page.evaluate(
            """id => {
        const c = document.getElementById(id);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
        return n;
    }""",
            canvas,
        )
    )


def test_tenant_view_charts_show_only_the_tenants_own_data(
    browser: Any, live: LiveServer, shots: Path
) -> None:
    """alpha's charts hold alpha's totals, are drawn, and nothing of beta's appears."""
    alpha = live.keys["alpha"]
    page, errors = _open(browser, live, alpha)
    page.wait_for_selector("body[data-state=ready]", timeout=20000)
    assert page.is_visible("#tenant-view") and not page.is_visible("#operator-view")

    start = (datetime.now(UTC) - timedelta(days=29)).date().isoformat()
    by_day = _get(live, f"/v1/usage?group_by=day&start={start}", alpha)["data"]
    ru = sum(Decimal(r["ru"]) for r in by_day)
    assert len(by_day) >= 6
    assert sum(v or 0 for v in _dataset(page, "chart-daily")) == pytest.approx(float(ru), rel=1e-9)
    tiers = {r["key"]: float(r["ru"]) for r in _get(live, "/v1/usage?group_by=tier", alpha)["data"]}
    assert dict(zip(_labels(page, "chart-tier"), _dataset(page, "chart-tier"), strict=True)) == pytest.approx(
        tiers
    )
    assert _labels(page, "chart-model") == ["tiny-gpt"]
    per_ru = [v for v in _dataset(page, "chart-unit", 1) if v is not None]
    assert len(per_ru) >= 6 and all(v > 0 for v in per_ru)
    for canvas in ("chart-daily", "chart-model", "chart-tier", "chart-unit"):
        assert _inked_pixels(page, canvas) > 500, f"{canvas} looks blank"
    page.screenshot(path=str(shots / "tenant-1280.png"), full_page=True)

    page.click("#measure button[data-measure=cost]")
    cost = sum(Decimal(r["cost"]) for r in by_day)
    assert sum(v or 0 for v in _dataset(page, "chart-daily")) == pytest.approx(float(cost), rel=1e-9)

    mine = {r["record_id"] for r in _get(live, "/v1/usage/recent?limit=25", alpha)["data"]}
    shown = set(
        page.eval_on_selector_all("#recent tr[data-record]", "rows => rows.map(r => r.dataset.record)")
    )
    assert shown == mine and len(shown) == 4 + sum(1 + d % 3 for d in range(1, 7))
    html = page.content()
    assert live.tenant_ids["beta"] not in html and live.tenant_ids["alpha"] in html
    assert "Invoice" in page.inner_text("#invoice-title")
    assert page.locator("#invoice tbody tr").count() >= 2  # default and flex lines

    page.click("#recent tr[data-record] button")
    page.wait_for_selector("#receipt[open]")
    assert "Signed receipt" in page.inner_text("#receipt-note")
    body = page.inner_text("#receipt-body")
    assert body.count("rec_") >= 1 and "root_hash" in body and "inclusion_proof" in body
    page.screenshot(path=str(shots / "tenant-receipt.png"))
    with page.expect_download() as saved:
        page.click("#receipt-download")
    receipt = json.loads(Path(saved.value.path()).read_text())
    keys = keys_from_document(httpx.get(live.url + "/v1/ledger/key", timeout=30).json())
    assert verify_receipt(receipt, keys).ok  # the downloaded file verifies offline
    assert receipt["entry"]["event"]["data"]["tenant_id"] == live.tenant_ids["alpha"]
    assert _unexpected(errors) == []
    page.close()


def test_tenant_view_fits_a_phone(browser: Any, live: LiveServer, shots: Path) -> None:
    """At 390 px wide the page does not scroll sideways and its charts still draw."""
    page, errors = _open(browser, live, live.keys["alpha"], width=390, height=844)
    page.wait_for_selector("body[data-state=ready]", timeout=20000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert _inked_pixels(page, "chart-daily") > 500
    page.screenshot(path=str(shots / "tenant-390.png"), full_page=True)
    assert _unexpected(errors) == []
    page.close()


def test_bad_key_shows_an_error_and_no_data(browser: Any, live: LiveServer, shots: Path) -> None:
    """A wrong key stays on the sign-in form with the API's message, and is forgotten."""
    page, _ = _open(browser, live, "im-not-a-real-key")  # its 401 is logged, as designed
    page.wait_for_selector("#signin-error:not([hidden])", timeout=20000)
    assert "invalid API key" in page.inner_text("#signin-error")
    assert not page.is_visible("#tenant-view") and not page.is_visible("#operator-view")
    assert page.evaluate("sessionStorage.length") == 0
    assert "im-not-a-real-key" not in page.url
    page.screenshot(path=str(shots / "signin-error.png"))
    page.close()


def test_operator_view_with_the_admin_key(browser: Any, live: LiveServer, shots: Path) -> None:
    """The admin key gets device time per engine, utilization, tenant totals and engines."""
    page, errors = _open(browser, live, live.admin_key)
    page.wait_for_selector("body[data-state=ready]", timeout=20000)
    assert page.is_visible("#operator-view") and not page.is_visible("#tenant-view")

    ov = _get(live, "/v1/admin/overview", live.admin_key)
    assert _labels(page, "chart-engines") == [e["engine_id"] for e in ov["engines"]]
    billed, warmup = _dataset(page, "chart-engines", 0), _dataset(page, "chart-engines", 1)
    assert all(v and v > 0 for v in billed) and all(v and v > 0 for v in warmup)
    assert _labels(page, "chart-tenants") == ["alpha", "beta"]
    tenants = _get(live, "/v1/admin/usage?group_by=tenant", live.admin_key)["data"]
    assert _dataset(page, "chart-tenants") == pytest.approx([float(t["cost"]) for t in tenants])
    for canvas in ("chart-engines", "chart-split", "chart-tenants", "chart-ops-daily"):
        assert _inked_pixels(page, canvas) > 500, f"{canvas} looks blank"
    assert page.locator("#engines tbody tr").count() == 2
    assert "%" in page.inner_text("#operator-kpis")
    page.screenshot(path=str(shots / "operator-1280.png"), full_page=True)
    assert _unexpected(errors) == []
    page.close()

"""Rate limits per tenant and key, with OpenAI's 429 and x-ratelimit-* headers; budgets as 429."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from infermeter.billing.rate_limits import Limits, RateLimited, RateLimiter, go_duration
from infermeter.core.errors import InvalidRequest
from tests.conftest import LiveServer, fake_service


def post(live: LiveServer, tenant: str = "alpha", max_tokens: int = 3) -> httpx.Response:
    return httpx.post(
        live.base_url + "/completions",
        json={"model": "tiny-gpt", "prompt": "hi", "max_tokens": max_tokens},
        headers={"authorization": f"Bearer {live.keys[tenant]}"},
        timeout=60,
    )


def limit(live: LiveServer, tenant: str, **kwargs: Any) -> None:
    live.service.store.set_rate_limits(f"tenant:{live.tenant_ids[tenant]}", Limits(**kwargs))
    live.service.rate_limits.invalidate()


def test_requests_per_minute_answer_429_with_openai_headers(fake_server: LiveServer) -> None:
    """Two requests a minute: both carry x-ratelimit-*; the third is a 429 with Retry-After."""
    limit(fake_server, "alpha", requests_per_min=2, tokens_per_min=1000)
    first, second, third = post(fake_server), post(fake_server), post(fake_server)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert (
        first.headers["x-ratelimit-remaining-requests"],
        second.headers["x-ratelimit-remaining-requests"],
    ) == (
        "1",
        "0",
    )
    assert first.headers["x-ratelimit-limit-tokens"] == "1000"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    assert third.status_code == 429
    error = third.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert int(third.headers["retry-after"]) >= 1 and "2 requests per minute" in error["message"]
    assert post(fake_server, "beta").status_code == 200  # another tenant is not limited
    with pytest.raises(openai.RateLimitError):
        fake_server.client("alpha").completions.create(model="tiny-gpt", prompt="x", max_tokens=2)


def test_a_key_limit_applies_to_that_key_only(fake_server: LiveServer) -> None:
    """A key's own limit stops that key; the tenant's other key keeps going."""
    store = fake_server.service.store
    tenant = fake_server.tenant_ids["alpha"]
    key, secret = store.create_key(tenant)
    store.set_rate_limits(f"key:{key.key_id}", Limits(requests_per_min=1))
    fake_server.service.rate_limits.invalidate()
    fake_server.keys["alpha2"] = secret
    assert post(fake_server, "alpha2").status_code == 200
    assert post(fake_server, "alpha2").status_code == 429
    assert post(fake_server, "alpha").status_code == 200


def test_ru_per_minute_counts_measured_ru(fake_server: LiveServer) -> None:
    """A tiny RU limit admits the first request, whose measured RU then blocks the next."""
    limit(fake_server, "alpha", ru_per_min=Decimal("0.000001"))
    ok = post(fake_server)
    assert ok.status_code == 200 and "x-ratelimit-limit-ru" in ok.headers
    blocked = post(fake_server)
    assert blocked.status_code == 429 and blocked.json()["error"]["type"] == "ru"


def test_a_request_over_the_token_limit_is_a_400_naming_max_tokens(fake_server: LiveServer) -> None:
    """prompt + max_tokens above the whole per-minute limit can never pass: 400, not 429."""
    limit(fake_server, "alpha", tokens_per_min=10)
    resp = post(fake_server, max_tokens=50)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "max_tokens"


def test_budgets_can_answer_429_insufficient_quota(tmp_path: Path, server_factory: Any) -> None:
    """With budget_status=429 an exhausted budget is OpenAI's 429 insufficient_quota."""
    live = server_factory(fake_service(tmp_path / "h", budget_status=429))
    live.service.store.set_budget(live.tenant_ids["alpha"], Decimal(0))
    resp = post(live)
    assert resp.status_code == 429 and resp.json()["error"]["type"] == "insufficient_quota"
    assert "retry-after" not in resp.headers


def test_a_bucket_refills_at_its_rate() -> None:
    """A minute's allowance bursts, then one request per 60/limit seconds comes back."""
    now = [0]
    limiter = RateLimiter(lambda: now[0])
    subjects = [("tenant:t", Limits(requests_per_min=2))]
    limiter.admit(subjects, 0)
    limiter.admit(subjects, 0)
    with pytest.raises(RateLimited) as err:
        limiter.admit(subjects, 0)
    assert err.value.retry_after_s == 30
    now[0] = 30_000
    assert limiter.admit(subjects, 0).headers["x-ratelimit-remaining-requests"] == "0"


def test_limits_refuse_nonsense_and_durations_read_like_openai() -> None:
    """A zero limit is refused naming the field; resets print as 12ms, 1.5s, 6m0s."""
    with pytest.raises(InvalidRequest) as err:
        Limits(requests_per_min=0)
    assert err.value.param == "requests_per_min"
    assert [go_duration(ms) for ms in (12, 1500, 2000, 360_000)] == ["12ms", "1.5s", "2s", "6m0s"]

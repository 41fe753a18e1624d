"""Budgets are hard caps: a tenant never ends above its budget by more than one step per request.

A request's reservation is its cost cap; the worker charges it each step's attributed share
and stops the request (finish_reason length, usage.metering.stopped_by "budget") before a
step that would pass it. These tests drive real HTTP servers on loopback around the fake
engine, whose step times are scripted, so every cost is exact.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from infermeter.app.service import Service
from infermeter.core.records import UsageRecord
from infermeter.core.types import Precision
from infermeter.runtime.engine import SeqInput, StepOutput
from infermeter.runtime.fake_engine import FakeEngine, fake_engine_info
from tests.conftest import LiveServer, fake_service, run_server


class PacedFake(FakeEngine):
    """Steps take a little real time, so concurrent requests batch together."""

    def step(self, inputs: Sequence[SeqInput]) -> StepOutput:
        time.sleep(0.0005)
        return super().step(inputs)


def two_tier_service(home: Path) -> Service:
    """A default (fp32) and a flex (int8) fake engine for the same model."""
    flex = PacedFake(info=fake_engine_info(engine_id="fake-int8", precision=Precision.INT8))
    return fake_service(home, PacedFake(), flex)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield from run_server(two_tier_service(tmp_path_factory.mktemp("caps") / "h"))


def mixed_bodies(seed: int, n: int = 64) -> list[dict[str, Any]]:
    """Different prompt lengths and max_tokens, both tiers, reproducibly."""
    rng = random.Random(seed)
    return [
        {
            "model": "tiny-gpt",
            "prompt": "x" * rng.randint(1, 120),
            "max_tokens": rng.randint(1, 40),
            "temperature": 0,
            "service_tier": rng.choice(["default", "flex"]),
        }
        for _ in range(n)
    ]


async def send_all(live: LiveServer, secret: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=live.url, timeout=60, limits=limits) as client:
        headers = {"authorization": f"Bearer {secret}"}
        return await asyncio.gather(
            *(client.post("/v1/completions", json=b, headers=headers) for b in bodies)
        )


def new_tenant(live: LiveServer, name: str, budget: Decimal | None) -> tuple[str, str]:
    store = live.service.store
    tenant = store.create_tenant(name, budget)
    _, secret = store.create_key(tenant.tenant_id)
    return tenant.tenant_id, secret


def records_of(live: LiveServer, tenant_id: str) -> list[UsageRecord]:
    store = live.service.store
    store.flush()
    return [r for _, r in store.list_records(tenant_id, limit=10_000)]


def one_step_slack(live: LiveServer, record: UsageRecord) -> Decimal:
    """An upper bound of one step's share of this request: its costliest step, whole, at the
    dearer phase factor (a share is never more than its step's measured time)."""
    svc = live.service
    engine = next(e.engine for e in svc._engines if e.engine.info.engine_id == record.engine_id)
    assert isinstance(engine, FakeEngine)
    us = max(
        (s.device_us for s in engine.history if any(i[0] == record.request_id for i in s.inputs)), default=0
    )
    info = engine.info
    ru = max(
        svc.ru_table.ru_micros(info.device_class, info.precision, us, 0),
        svc.ru_table.ru_micros(info.device_class, info.precision, 0, us),
    )
    return svc.plan.cost(ru, record.service_tier)


def total(records: list[UsageRecord]) -> Decimal:
    return sum((r.cost for r in records), Decimal(0))


@pytest.fixture(scope="module")
def mix_cost(live: LiveServer) -> Decimal:
    """What one 64-request mix costs with no budget at all."""
    tenant_id, secret = new_tenant(live, "unlimited", None)
    responses = asyncio.run(send_all(live, secret, mixed_bodies(0)))
    assert {r.status_code for r in responses} == {200}
    return total(records_of(live, tenant_id))


@pytest.mark.parametrize("repeat", range(20))
def test_64_concurrent_mixed_requests_stay_within_budget_plus_one_step_each(
    live: LiveServer, mix_cost: Decimal, repeat: int
) -> None:
    """Against a budget of a fifth of what the mix costs, the tenant ends within budget + slack."""
    limit = (mix_cost / 5).quantize(Decimal("1e-18"))
    tenant_id, secret = new_tenant(live, f"small-{repeat}", limit)
    responses = asyncio.run(send_all(live, secret, mixed_bodies(repeat)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 402}, [r.text for r in responses if r.status_code not in (200, 402)]
    records = records_of(live, tenant_id)
    spent = total(records)
    slack = sum((one_step_slack(live, r) for r in records), Decimal(0))
    assert spent <= limit + slack, f"spent {spent} > limit {limit} + one step per request {slack}"
    assert spent == live.service.store.spent(tenant_id)
    stopped = [r for r in records if r.stopped_by == "budget"]
    assert 402 in codes or stopped, "the budget never bound: the test did not exercise the cap"
    for r in stopped:
        assert r.status.value == "length"
    _limit, _spent, reserved = live.service.budgets.snapshot(tenant_id)
    assert reserved == 0


def test_the_openai_client_sees_the_same_caps(live: LiveServer, mix_cost: Decimal) -> None:
    """One repeat through the official client: 200s and 402s only, and the same bound holds."""
    limit = (mix_cost / 5).quantize(Decimal("1e-18"))
    tenant_id, secret = new_tenant(live, "openai-small", limit)
    client = openai.AsyncOpenAI(base_url=live.base_url, api_key=secret, max_retries=0, timeout=60)

    async def one(body: dict[str, Any]) -> str:
        args = {k: v for k, v in body.items() if k != "service_tier"}
        try:
            done = await client.completions.create(**args, extra_body={"service_tier": body["service_tier"]})
        except openai.APIStatusError as exc:
            return str(exc.status_code)
        return str(done.choices[0].finish_reason)

    async def run() -> list[str]:
        try:
            return await asyncio.gather(*(one(b) for b in mixed_bodies(99)))
        finally:
            await client.close()

    outcomes = asyncio.run(run())
    assert set(outcomes) <= {"stop", "length", "402"}
    records = records_of(live, tenant_id)
    slack = sum((one_step_slack(live, r) for r in records), Decimal(0))
    assert total(records) <= limit + slack


def test_a_cap_stops_a_request_as_length_with_stopped_by_budget(live: LiveServer) -> None:
    """A budget worth a few tokens ends a long request as length, stopped_by budget, within budget."""
    body = {"model": "tiny-gpt", "prompt": "hello", "max_tokens": 30, "temperature": 0}
    _, probe = new_tenant(live, "probe", None)
    full = httpx.post(live.url + "/v1/completions", json=body, headers={"authorization": f"Bearer {probe}"})
    assert full.json()["usage"]["completion_tokens"] == 30
    cost_full = Decimal(full.json()["usage"]["metering"]["cost"])
    tenant_id, secret = new_tenant(live, "few-tokens", cost_full / 3)
    resp = httpx.post(live.url + "/v1/completions", json=body, headers={"authorization": f"Bearer {secret}"})
    assert resp.status_code == 200
    out = resp.json()
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["metering"]["stopped_by"] == "budget"
    assert 0 < out["usage"]["completion_tokens"] < 30
    [record] = records_of(live, tenant_id)
    assert record.stopped_by == "budget" and record.cost <= cost_full / 3
    assert live.service.store.get_record(record.record_id) == record  # the ledger keeps stopped_by


def test_a_budget_worth_n_requests_admits_about_n(live: LiveServer) -> None:
    """Sequential identical requests against a budget of N times their real cost: about N run."""
    body = {"model": "tiny-gpt", "prompt": "hello there", "max_tokens": 12, "temperature": 0}
    _, probe = new_tenant(live, "probe-n", None)
    first = httpx.post(live.url + "/v1/completions", json=body, headers={"authorization": f"Bearer {probe}"})
    one = Decimal(first.json()["usage"]["metering"]["cost"])
    n = 5
    tenant_id, secret = new_tenant(live, "worth-five", one * n)
    admitted = 0
    for _ in range(2 * n):
        resp = httpx.post(
            live.url + "/v1/completions", json=body, headers={"authorization": f"Bearer {secret}"}
        )
        if resp.status_code == 402:
            break
        assert resp.status_code == 200
        admitted += 1
    assert n - 1 <= admitted <= n
    assert total(records_of(live, tenant_id)) <= one * n


def test_concurrent_requests_share_a_small_budget_instead_of_one_holding_it(live: LiveServer) -> None:
    """2N requests at once against a budget worth N of them: most are admitted, the budget is
    spent (not stranded in reservations of max_tokens), and never past it by more than a step."""
    body = {"model": "tiny-gpt", "prompt": "hello there", "max_tokens": 40, "temperature": 0}
    _, probe = new_tenant(live, "probe-share", None)
    first = httpx.post(live.url + "/v1/completions", json=body, headers={"authorization": f"Bearer {probe}"})
    one = Decimal(first.json()["usage"]["metering"]["cost"])
    n = 6
    limit = one * n
    tenant_id, secret = new_tenant(live, "share-six", limit)

    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:
            headers = {"authorization": f"Bearer {secret}"}
            answers = await asyncio.gather(
                *(client.post("/v1/completions", json=body, headers=headers) for _ in range(2 * n))
            )
        return [a.status_code for a in answers]

    statuses = asyncio.run(run())
    assert set(statuses) <= {200, 402}
    assert statuses.count(200) >= n
    records = records_of(live, tenant_id)
    slack = sum((one_step_slack(live, r) for r in records), Decimal(0))
    assert total(records) <= limit + slack
    assert total(records) >= limit / 2  # usable: reserving all of max_tokens up front spent < half

"""Cost caps: the per-token ceilings, the exact money-to-RU limit, and a cap's running cost."""

from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from infermeter.app.cost_caps import DEFAULT_DECODE_US, CostCeilings, Pricer, RequestCap, _SlidingMax
from infermeter.billing.budgets import Budgets, Grant
from infermeter.billing.pricing import DEFAULT_PLAN, PricePlan
from infermeter.core.records import Participant, StepRecord, StepShares, UsageRecord
from infermeter.core.types import ServiceTier
from infermeter.metering.ru import SEED_TABLE
from infermeter.runtime.fake_engine import fake_engine_info
from infermeter.runtime.worker import GenerationRequest
from tests.conftest import fake_service

INFO = fake_engine_info()


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=300), st.integers(1, 20))
def test_sliding_max_is_the_max_of_the_last_values(values: list[float], size: int) -> None:
    """After every value, get() is the maximum of the last ``size`` values."""
    window = _SlidingMax(size)
    for i, v in enumerate(values):
        window.add(v)
        assert window.get() == max(values[max(0, i + 1 - size) : i + 1])


def test_ceilings_follow_the_costliest_token_per_phase() -> None:
    """The ceiling is the largest attributed µs per token seen, per phase; a default before any."""
    ceilings = CostCeilings()
    assert ceilings.decode_us(2) == 2 * DEFAULT_DECODE_US
    parts = (Participant("a", prefill_tokens=10), Participant("b", context_tokens=5, decode_tokens=1))
    step = StepRecord(1, "e", "cpu", 300, parts)
    ceilings.observe(step, StepShares(1, 300, {"a": 200, "b": 100}, 0))
    assert ceilings.prefill_us(3) == 60 and ceilings.decode_us(3) == 300
    warm = StepRecord(2, "e", "cpu", 1000, (Participant("w", prefill_tokens=4),), warmup=True)
    ceilings.observe(warm, StepShares(2, 1000, {}, 1000))  # warm-up: its whole time per token
    assert ceilings.prefill_us(1) == 250


@given(
    st.decimals(min_value=Decimal("1e-12"), max_value=Decimal("1e6"), places=12),
    st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("100"), places=4),
)
def test_ru_within_is_the_largest_affordable_ru(amount: Decimal, price: Decimal) -> None:
    """cost(ru_within(x)) <= x < cost(ru_within(x) + 1), exactly."""
    plan = PricePlan("p", "USD", {ServiceTier.DEFAULT: price})
    pricer = Pricer(SEED_TABLE, plan, INFO, ServiceTier.DEFAULT)
    ru = pricer.ru_within(amount)
    assert ru is not None
    assert plan.cost(ru, ServiceTier.DEFAULT) <= amount < plan.cost(ru + 1, ServiceTier.DEFAULT)


def test_a_free_tier_never_caps() -> None:
    """A zero price: any amount allows any step."""
    plan = PricePlan("free", "USD", {ServiceTier.DEFAULT: Decimal(0)})
    budgets = Budgets(spent_of=lambda _: Decimal(0), limit_of=lambda _: Decimal(0))
    cap = RequestCap(
        "r", Decimal(0), Pricer(SEED_TABLE, plan, INFO, ServiceTier.DEFAULT), CostCeilings(), budgets
    )
    assert cap.allows(1000, 1000)


def cap_with(limit: Decimal, reserve: Decimal) -> tuple[RequestCap, Budgets]:
    budgets = Budgets(spent_of=lambda _: Decimal(0), limit_of=lambda _: limit)
    budgets.reserve("t", "r", reserve)
    pricer = Pricer(SEED_TABLE, DEFAULT_PLAN, INFO, ServiceTier.DEFAULT)
    return RequestCap("r", reserve, pricer, CostCeilings(), budgets), budgets


def test_a_cap_refuses_a_step_past_it_when_the_budget_is_spent() -> None:
    """Cost so far plus the step at the ceilings past the cap, and nothing left: refused."""
    pricer = Pricer(SEED_TABLE, DEFAULT_PLAN, INFO, ServiceTier.DEFAULT)
    two_tokens = pricer.cost(0, int(2 * DEFAULT_DECODE_US))
    cap, _ = cap_with(two_tokens, two_tokens)
    assert cap.allows(0, 1)
    cap.charge(0, int(DEFAULT_DECODE_US))
    assert cap.allows(0, 1)  # lands exactly on the cap
    cap.charge(0, int(DEFAULT_DECODE_US))
    assert cap.cost() == two_tokens
    assert not cap.allows(0, 1)


def test_a_cap_grows_from_the_remaining_budget() -> None:
    """With budget left, a cap that would stop the request takes more reservation instead."""
    pricer = Pricer(SEED_TABLE, DEFAULT_PLAN, INFO, ServiceTier.DEFAULT)
    one = pricer.cost(0, int(DEFAULT_DECODE_US))
    cap, budgets = cap_with(one * 100, one)
    cap.charge(0, int(DEFAULT_DECODE_US))
    assert cap.allows(0, 1)
    assert cap.amount > one and budgets.reserved_for("r") == cap.amount


def test_a_caps_running_cost_is_the_records_price(tmp_path: Path) -> None:
    """Charged with the pipeline's shares, the cap's cost at the end equals the record's cost."""
    svc = fake_service(tmp_path / "h")
    svc.start()
    try:
        info = svc.engine_infos()[0]
        svc.budgets.reserve_up_to("t", "req", Decimal(1), Decimal(1))
        cap = svc.pipeline.cost_cap("req", info, ServiceTier.DEFAULT, Grant(Decimal(1), True))
        assert cap is not None
        done = threading.Event()
        outcome: list[object] = []

        def finished(o: object) -> None:
            outcome.append(o)
            done.set()

        svc.worker.submit(
            GenerationRequest(
                request_id="req",
                tenant_id="t",
                model=info.model,
                engine_id=info.engine_id,
                tier=ServiceTier.DEFAULT,
                prompt_ids=list(b"a prompt of some length"),
                max_tokens=9,
                on_finish=finished,
                cap=cap,
            )
        )
        assert done.wait(20)
    finally:
        svc.stop()
    [record] = outcome
    assert isinstance(record, UsageRecord)
    assert record.cost == cap.cost() and record.cost > 0
    assert (cap.prefill_us, cap.decode_us) == (record.prefill_us, record.decode_us)

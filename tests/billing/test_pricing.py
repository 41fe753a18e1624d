"""Price plans: exact costs, never a float, flex below default, JSON round trip."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infermeter.billing.pricing import DEFAULT_PLAN, PricePlan
from infermeter.core.errors import ConfigError
from infermeter.core.types import ServiceTier

ru = st.integers(min_value=0, max_value=10**15)
prices = st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False)


def test_default_plan_values() -> None:
    """plan-2026-11 prices 1,000 RU at 0.0020 USD (default) and 0.0010 USD (flex)."""
    assert DEFAULT_PLAN.version == "plan-2026-11" and DEFAULT_PLAN.currency == "USD"
    assert DEFAULT_PLAN.price(ServiceTier.DEFAULT) == Decimal("0.0020")
    assert DEFAULT_PLAN.price("flex") == Decimal("0.0010")


def test_worked_example() -> None:
    """1 RU (10^6 micro-RU) at 0.0020 per 1,000 RU costs 0.000002 exactly."""
    assert DEFAULT_PLAN.cost(1_000_000, ServiceTier.DEFAULT) == Decimal("0.000002")
    assert DEFAULT_PLAN.cost(1, ServiceTier.DEFAULT) == Decimal("2E-12")


@given(ru, prices)
def test_cost_is_exact(ru_micros: int, price: Decimal) -> None:
    """cost x 10^9 == ru_micros x price exactly: nothing is rounded away."""
    plan = PricePlan("p", "USD", {ServiceTier.DEFAULT: price})
    cost = plan.cost(ru_micros, ServiceTier.DEFAULT)
    assert isinstance(cost, Decimal)
    assert cost.scaleb(9) == Decimal(ru_micros) * price
    assert plan.cost(-ru_micros, ServiceTier.DEFAULT) == -cost


@given(st.integers(min_value=1, max_value=10**15))
def test_flex_is_cheaper_than_default(ru_micros: int) -> None:
    """For the same positive RU, flex costs strictly less than default."""
    assert DEFAULT_PLAN.cost(ru_micros, "flex") < DEFAULT_PLAN.cost(ru_micros, "default")


@given(ru)
def test_warmup_is_free(ru_micros: int) -> None:
    """Warmup usage is priced at zero whatever its RU."""
    assert DEFAULT_PLAN.cost(ru_micros, ServiceTier.DEFAULT, warmup=True) == 0


@given(st.floats(allow_nan=False))
def test_float_ru_is_refused(value: float) -> None:
    """A float RU count raises TypeError instead of pricing an inexact number."""
    with pytest.raises(TypeError, match="ru_micros must be an int"):
        DEFAULT_PLAN.cost(value, ServiceTier.DEFAULT)  # type: ignore[arg-type]


def test_float_and_bad_prices_are_refused() -> None:
    """Float, negative or non-numeric prices and bad currencies raise ConfigError."""
    with pytest.raises(ConfigError, match="never a float"):
        PricePlan("p", "USD", {ServiceTier.DEFAULT: 0.002})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="non-negative"):
        PricePlan("p", "USD", {ServiceTier.DEFAULT: Decimal("-1")})
    with pytest.raises(ConfigError, match="not a decimal"):
        PricePlan("p", "USD", {ServiceTier.DEFAULT: "two"})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="ISO 4217"):
        PricePlan("p", "usd", {ServiceTier.DEFAULT: Decimal(1)})
    with pytest.raises(ConfigError, match="unknown service tier 'batch'"):
        PricePlan("p", "USD", {"batch": Decimal(1)})  # type: ignore[dict-item]


def test_missing_tier_names_the_priced_ones() -> None:
    """Pricing a tier the plan lacks raises ConfigError listing the tiers it has."""
    plan = PricePlan("p", "USD", {ServiceTier.DEFAULT: Decimal(1)})
    with pytest.raises(ConfigError, match=r"no price for tier 'flex'.*default"):
        plan.cost(1, ServiceTier.FLEX)


def test_json_round_trip_keeps_decimal_text() -> None:
    """to_json keeps prices as the exact strings; from_json (dict or text) restores the plan."""
    data = DEFAULT_PLAN.to_json()
    assert data == {
        "version": "plan-2026-11",
        "currency": "USD",
        "per_1000_ru": {"default": "0.0020", "flex": "0.0010", "priority": "0.0040"},
    }
    assert PricePlan.from_json(data) == DEFAULT_PLAN
    assert PricePlan.from_json(json.dumps(data)) == DEFAULT_PLAN
    data["per_1000_ru"]["flex"] = 0.001
    with pytest.raises(ConfigError, match="decimal strings"):
        PricePlan.from_json(data)

"""The flex spot multiplier formula (pure): bounded below 1, slew-limited, on a 0.05 grid."""

from __future__ import annotations

from decimal import Decimal

import pytest

from infermeter.billing.spot import EpochInputs, SpotFormula, next_multiplier
from infermeter.core.errors import ConfigError

F = SpotFormula()
EPOCH_MS = 300_000


def step(busy_ms: int, u_bar: str = "0", m: str = "0.50", devices: int = 1) -> tuple[Decimal, Decimal]:
    return next_multiplier(F, EpochInputs(busy_ms, 0, devices, Decimal(u_bar), Decimal(m)))


def test_an_idle_pool_stays_at_the_floor() -> None:
    """No load: u_bar 0, the multiplier stays at m_min 0.50."""
    assert step(0) == (Decimal(0), Decimal("0.50"))


def test_a_full_pool_rises_by_at_most_delta_per_epoch() -> None:
    """Saturated from the floor: the EWMA moves 28 % of the way and m rises by at most 0.10."""
    u_bar, m = step(EPOCH_MS, u_bar="0.90", m="0.50")
    assert u_bar == Decimal("0.9280") and m == Decimal("0.60")


def test_the_multiplier_never_reaches_the_default_price() -> None:
    """However long the overload lasts, m settles at the ceiling 0.90 (< 1)."""
    u_bar, m = Decimal(0), Decimal("0.50")
    for _ in range(40):
        u_bar, m = next_multiplier(F, EpochInputs(3 * EPOCH_MS, EPOCH_MS, 1, u_bar, m))
    assert m == Decimal("0.90")


def test_no_devices_online_counts_as_saturated() -> None:
    """devices_online 0: u = u_cap (the EWMA moves toward 1.5), so the multiplier rises."""
    assert step(0, u_bar="0.90", devices=0) == (Decimal("1.0680"), Decimal("0.60"))


def test_a_multiplier_at_or_above_one_is_refused() -> None:
    """m_max must stay below 1: flex is cheaper than default at every load."""
    with pytest.raises(ConfigError, match="m_max < 1"):
        SpotFormula(m_max=Decimal(1))

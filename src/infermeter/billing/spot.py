"""The flex spot multiplier of one epoch from the previous epoch's measurements. Pure, Decimal.

    u      = min(u_cap, (busy_ms + backlog_ms) / (epoch_ms * devices_online))
    u_bar  = u_bar_prev + alpha * (u - u_bar_prev)                      # EWMA
    m*     = m_min + (m_max - m_min) * clip((u_bar - u_lo) / (u_hi - u_lo), 0, 1)
    m      = quantize_grid( clip(m*, m_prev - delta, m_prev + delta) )  # slew limit, then grid
    m      = clip(m, m_min, m_max)

Defaults: epoch 300 s, alpha 0.28, u_lo 0.40, u_hi 0.90, m_min 0.50, m_max 0.90, delta 0.10,
grid 0.05 (half-up), u_cap 1.5. No devices online counts as saturated (u = u_cap).

Only the formula is built: nothing yet publishes a multiplier per epoch or prices flex with
it (docs/pricing.md, "Not built yet").
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from infermeter.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SpotFormula:
    epoch_s: int = 300
    alpha: Decimal = Decimal("0.28")
    u_lo: Decimal = Decimal("0.40")
    u_hi: Decimal = Decimal("0.90")
    m_min: Decimal = Decimal("0.50")
    m_max: Decimal = Decimal("0.90")
    delta: Decimal = Decimal("0.10")
    grid: Decimal = Decimal("0.05")
    u_cap: Decimal = Decimal("1.5")

    def __post_init__(self) -> None:
        if not (0 < self.alpha <= 1 and self.u_lo < self.u_hi and 0 < self.m_min <= self.m_max < 1):
            raise ConfigError(
                f"spot formula {self}: needs 0 < alpha <= 1, u_lo < u_hi and 0 < m_min <= m_max < 1 "
                "(flex stays cheaper than default at every load)"
            )
        if self.epoch_s < 1 or self.delta <= 0 or self.grid <= 0:
            raise ConfigError(f"spot formula {self}: epoch_s, delta and grid must be positive")


@dataclass(frozen=True, slots=True)
class EpochInputs:
    busy_ms: int  # device time of all tiers in the epoch
    backlog_ms: int  # estimated device time of work still waiting at its end
    devices_online: int
    u_bar_prev: Decimal
    m_prev: Decimal


def _clip(x: Decimal, lo: Decimal, hi: Decimal) -> Decimal:
    return max(lo, min(hi, x))


def next_multiplier(f: SpotFormula, e: EpochInputs) -> tuple[Decimal, Decimal]:
    """``(u_bar, m)`` for the next epoch."""
    if e.devices_online <= 0:
        u = f.u_cap
    else:
        capacity = Decimal(f.epoch_s * 1000 * e.devices_online)
        u = min(f.u_cap, Decimal(e.busy_ms + e.backlog_ms) / capacity)  # 28 significant digits
    u_bar = e.u_bar_prev + f.alpha * (u - e.u_bar_prev)
    ramp = _clip((u_bar - f.u_lo) / (f.u_hi - f.u_lo), Decimal(0), Decimal(1))
    target = f.m_min + (f.m_max - f.m_min) * ramp
    slewed = _clip(target, e.m_prev - f.delta, e.m_prev + f.delta)
    m = (slewed / f.grid).quantize(Decimal(1), rounding=ROUND_HALF_UP) * f.grid
    return u_bar, _clip(m, f.m_min, f.m_max)


__all__ = ["EpochInputs", "SpotFormula", "next_multiplier"]

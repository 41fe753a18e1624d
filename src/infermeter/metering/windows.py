"""Split one sampler window's energy and activity over requests, through their step shares.

A window [start, end) has an energy-counter delta E (mJ) and window-averaged SM and DRAM
activity. Idle energy (idle power x window length) and the energy of inter-step gaps belong
to no request. The energy above idle is split over the steps that overlap the window, pro
rata by wall-clock overlap, and within each step by its device-µs shares:

    weight_r = Σ_s share_r,s x overlap_s / duration_s        (device-µs of r in the window)
    energy_r = (E - E_idle) x weight_r / Σ_s device_us_s x overlap_s / duration_s

computed in integers (largest remainder, tied blocks as in ``attribution``), so that
Σ energy_r + unattributed == E exactly (energy closure). Each step's unattributed µs, idle
energy, gaps and rounding make up the reported unattributed pool.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from infermeter.core.records import StepShares
from infermeter.metering.attribution import remainder_threshold

NS_PER_S = 1_000_000_000
# Window-level ms are rounded half-even to 10^-6 ms (1 ns): internal quantities, not money.
MS_PLACES = 6


@dataclass(frozen=True, slots=True)
class WindowAttribution:
    """What of one window went to which request. Σ energy_shares_mj + unattributed == energy_mj."""

    window_start_ns: int
    window_end_ns: int
    energy_mj: int
    idle_mj: int  # idle power x window length (floored); part of the unattributed pool
    energy_shares_mj: dict[str, int]
    unattributed_energy_mj: int  # idle, gaps, unattributed step time, rounding
    device_ms: dict[str, Decimal]  # each request's step time inside the window
    sm_weighted_ms: dict[str, Decimal] | None  # device_ms x SM activity; None without a sample
    dram_weighted_ms: dict[str, Decimal] | None  # device_ms x DRAM activity


def _activity(name: str, value: Decimal | float | None) -> tuple[int, int] | None:
    if value is None:
        return None
    exact = Decimal(repr(value)) if isinstance(value, float) else value
    if not isinstance(exact, Decimal) or not exact.is_finite() or not 0 <= exact <= 1:
        raise ValueError(f"{name}={value!r} must be a ratio between 0 and 1 (divide a percentage by 100)")
    return exact.as_integer_ratio()


def _half_even(num: int, den: int) -> int:
    q, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and q % 2 == 1):
        q += 1
    return q


def _ms(num: int, den: int, ratio: tuple[int, int] = (1, 1)) -> Decimal:
    """num/den µs x a/b as ms, rounded half-even to MS_PLACES."""
    a, b = ratio
    scaled = _half_even(num * a * 10**MS_PLACES, den * b * 1000)
    return Decimal(scaled).scaleb(-MS_PLACES)


def attribute_window(
    window_start_ns: int,
    window_end_ns: int,
    energy_delta_mj: int,
    idle_power_mw: int,
    step_shares: Sequence[tuple[int, int, StepShares]],
    sm_activity: Decimal | float | None,
    dram_activity: Decimal | float | None,
) -> WindowAttribution:
    """Split a window's energy over requests by their overlapped step shares; exact closure.

    ``step_shares`` holds (start_ns, end_ns, shares) per step, by wall clock; steps outside
    the window add nothing, steps across an edge add the fraction that falls inside. A
    zero-length step counts whole if its start lies in [start, end). Activities are ratios
    in [0, 1] or None when the window had no valid sample.
    """
    length = window_end_ns - window_start_ns
    if length <= 0:
        raise ValueError(f"window [{window_start_ns}, {window_end_ns}) ns is empty; end must be after start")
    if energy_delta_mj < 0 or idle_power_mw < 0:
        raise ValueError(
            f"energy delta {energy_delta_mj} mJ and idle power {idle_power_mw} mW must be >= 0 "
            "(a counter that went backwards was reset: drop that window)"
        )
    sm = _activity("sm_activity", sm_activity)
    dram = _activity("dram_activity", dram_activity)

    # (overlap, duration) per step: the exact fraction of its device time inside the window
    parts: list[tuple[int, int, StepShares]] = []
    for start, end, shares in step_shares:
        if end < start:
            raise ValueError(f"step {shares.step_id} ends ({end} ns) before it starts ({start} ns)")
        if end == start:
            if window_start_ns <= start < window_end_ns:
                parts.append((1, 1, shares))
            continue
        overlap = min(end, window_end_ns) - max(start, window_start_ns)
        if overlap == end - start:
            parts.append((1, 1, shares))  # wholly inside: keeps the common denominator small
        elif overlap > 0:
            parts.append((overlap, end - start, shares))

    # Common denominator: weights become integers in units of 1/denom µs.
    denom = math.lcm(*(d for _, d, _ in parts)) if parts else 1
    weights: dict[str, int] = {}
    total_weight = 0
    for overlap, duration, shares in parts:
        factor = overlap * (denom // duration)
        total_weight += shares.device_us * factor
        for rid, share in shares.shares.items():
            weights[rid] = weights.get(rid, 0) + share * factor

    idle_mj = idle_power_mw * length // NS_PER_S  # mW x ns = 10^-9 mJ
    dynamic = max(0, energy_delta_mj - idle_mj)
    energy: dict[str, int] = dict.fromkeys(weights, 0)
    if dynamic and total_weight:
        rems: dict[str, int] = {}
        for rid, w in weights.items():
            energy[rid], rems[rid] = divmod(dynamic * w, total_weight)
        # requests may take at most the floor of their exact total; the rest is the pool's
        available = dynamic * sum(weights.values()) // total_weight - sum(energy.values())
        threshold = remainder_threshold(rems.values(), available)
        if threshold is not None:
            for rid, r in rems.items():
                if r >= threshold:
                    energy[rid] += 1

    scale = denom  # weight / denom = µs
    device_ms = {rid: _ms(w, scale) for rid, w in weights.items()}
    sm_ms = None if sm is None else {rid: _ms(w, scale, sm) for rid, w in weights.items()}
    dram_ms = None if dram is None else {rid: _ms(w, scale, dram) for rid, w in weights.items()}
    return WindowAttribution(
        window_start_ns=window_start_ns,
        window_end_ns=window_end_ns,
        energy_mj=energy_delta_mj,
        idle_mj=idle_mj,
        energy_shares_mj=energy,
        unattributed_energy_mj=energy_delta_mj - sum(energy.values()),
        device_ms=device_ms,
        sm_weighted_ms=sm_ms,
        dram_weighted_ms=dram_ms,
    )


__all__ = ["WindowAttribution", "attribute_window"]

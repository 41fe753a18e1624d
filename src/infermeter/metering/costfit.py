"""Fit the attribution cost model's coefficients from logged steps (``infermeter calibrate``).

Each step's measured device time is modeled as the sum of its participants' marginal costs
plus the fixed per-step term:

    T ≈ α·Σp + β·Σp·c + γ·Σd + δ·Σd·c + φ

a linear model in (α, β, γ, δ, φ), fitted by non-negative least squares (Lawson-Hanson active
set, on column-scaled features) so that no term can make a share negative. The fitted
coefficients are scaled to integers in femtoseconds per feature unit, so that
``model.predict(participants) / FS_PER_US`` is the predicted step time in µs.
"""

# ruff: noqa: RUF002  (Greek letters are the cost model's published coefficient names)

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import numpy as np
from numpy.typing import NDArray

from infermeter.core.records import Participant
from infermeter.metering.attribution import CostModel

FS_PER_US = 10**9  # fitted coefficients are femtoseconds per feature unit
MIN_STEPS = 5
MAPE_PLACES = 4


def step_features(participants: Sequence[Participant]) -> tuple[int, int, int, int, int]:
    """(Σp, Σp·c, Σd, Σd·c, 1): the step's features for (α, β, γ, δ, φ); zeros if empty."""
    sp = spc = sd = sdc = 0
    for p in participants:
        sp += p.prefill_tokens
        spc += p.prefill_tokens * p.context_tokens
        sd += p.decode_tokens
        sdc += p.decode_tokens * p.context_tokens
    return sp, spc, sd, sdc, 1 if participants else 0


def nnls(a: NDArray[np.float64], b: NDArray[np.float64], max_iter: int = 100) -> NDArray[np.float64]:
    """argmin ‖a·x − b‖ subject to x >= 0 (Lawson and Hanson's active-set method)."""
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = 10 * np.finfo(float).eps * np.abs(a).sum(axis=0).max() * max(m, n)
    w = a.T @ (b - a @ x)
    for _ in range(max_iter):
        candidates = ~passive & (w > tol)
        if not candidates.any():
            break
        passive[np.argmax(np.where(candidates, w, -np.inf))] = True
        for _ in range(n + 1):
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                break
            # step back towards x until the first passive coefficient reaches zero
            blocking = passive & (z <= 0)
            gap = x[blocking] - z[blocking]
            ratios = np.divide(x[blocking], gap, out=np.zeros_like(gap), where=gap > 0)
            x = x + float(ratios.min()) * (z - x)
            passive &= x > tol
        x = np.where(passive, np.maximum(z, 0.0), 0.0)
        w = a.T @ (b - a @ x)
    return x


def fit_cost_model(
    samples: Sequence[tuple[Sequence[Participant], int]], version: str
) -> tuple[CostModel, Decimal]:
    """Fit (α, β, γ, δ, φ) from (participants, measured device_us) steps.

    Returns the integer model (femtoseconds per feature unit) and the mean absolute
    percentage error of its predicted step times against the measured ones, in percent
    (e.g. Decimal("1.8312") = 1.83 %). Steps without participants or with zero time are
    skipped; at least MIN_STEPS usable steps are needed.
    """
    rows: list[tuple[int, int, int, int, int]] = []
    times: list[int] = []
    for participants, device_us in samples:
        if device_us < 0:
            raise ValueError(f"a step's device_us is {device_us}; measured times are >= 0")
        if participants and device_us > 0:
            rows.append(step_features(participants))
            times.append(device_us)
    if len(rows) < MIN_STEPS:
        raise ValueError(
            f"cost model {version!r}: {len(rows)} usable steps (with participants and time > 0); "
            f"need at least {MIN_STEPS}, with varied batch sizes and prompt lengths"
        )
    features = np.array(rows, dtype=np.float64)
    measured = np.array(times, dtype=np.float64)
    # Scale each column to unit norm so that Σp·c (~10^6) and the constant (1) are comparable.
    norms = np.linalg.norm(features, axis=0)
    used = norms > 0
    scaled = np.zeros_like(features)
    scaled[:, used] = features[:, used] / norms[used]
    solution = nnls(scaled, measured)
    coef_us = np.zeros(5)
    coef_us[used] = solution[used] / norms[used]

    ints = [max(0, round(float(c) * FS_PER_US)) for c in coef_us]
    model = CostModel(version, *ints)

    exact_rows = [(participants, t) for participants, t in samples if participants and t > 0]
    error = Decimal(0)
    for participants, t in exact_rows:
        predicted = Decimal(model.predict(list(participants))) / FS_PER_US
        error += abs(predicted - t) / t
    mape = (error * 100 / len(exact_rows)).quantize(Decimal(1).scaleb(-MAPE_PLACES))
    return model, mape


__all__ = ["FS_PER_US", "MIN_STEPS", "fit_cost_model", "nnls", "step_features"]

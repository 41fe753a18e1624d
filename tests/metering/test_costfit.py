"""Cost-model fitting: recovers known coefficients from noisy steps, non-negative, clear errors."""

from __future__ import annotations

import itertools
from decimal import Decimal

import numpy as np
import pytest

from infermeter.core.records import Participant, StepRecord
from infermeter.metering.attribution import attribute
from infermeter.metering.costfit import FS_PER_US, fit_cost_model, nnls, step_features

TRUE = {"alpha": 0.25, "beta": 0.0002, "gamma": 30.0, "delta": 0.05, "phi": 4000.0}  # µs


def synthetic_steps(
    rng: np.random.Generator, count: int, noise: float
) -> list[tuple[list[Participant], int]]:
    steps = []
    for s in range(count):
        parts = []
        for i in range(int(rng.integers(1, 17))):
            ctx = int(rng.integers(0, 2048))
            if rng.random() < 0.3:
                parts.append(Participant(f"r{s}_{i}", int(rng.integers(1, 1024)), ctx, 0))
            else:
                parts.append(Participant(f"r{s}_{i}", 0, ctx, 1))
        sp, spc, sd, sdc, one = step_features(parts)
        t = (
            TRUE["alpha"] * sp + TRUE["beta"] * spc + TRUE["gamma"] * sd
            + TRUE["delta"] * sdc + TRUE["phi"] * one
        )  # fmt: skip
        steps.append((parts, round(t * (1 + rng.normal(0, noise)))))
    return steps


def test_recovers_known_coefficients_from_noisy_steps() -> None:
    """600 steps with 0.5 % noise recover every coefficient within 5 % and a MAPE under 1 %."""
    steps = synthetic_steps(np.random.default_rng(7), 600, 0.005)
    model, mape = fit_cost_model(steps, "fit-test")
    assert model.version == "fit-test"
    for name, want in TRUE.items():
        got = getattr(model, name) / FS_PER_US
        assert abs(got - want) / want < 0.05, (name, got, want)
    assert isinstance(mape, Decimal) and Decimal(0) < mape < Decimal(1)


def test_exact_data_fits_exactly() -> None:
    """Noise-free steps give a near-zero MAPE."""
    _, mape = fit_cost_model(synthetic_steps(np.random.default_rng(1), 60, 0.0), "exact")
    assert mape < Decimal("0.05")


def test_fitted_model_attributes_steps() -> None:
    """A fitted model plugs into attribute(): conserved, prefill-heavy requests pay more."""
    model, _ = fit_cost_model(synthetic_steps(np.random.default_rng(3), 100, 0.01), "fit")
    parts = (Participant("long", 800, 0, 0), Participant("dec", 0, 100, 1))
    out = attribute(StepRecord(1, "e", "cuda:0", 10_000, parts), model)
    assert sum(out.shares.values()) + out.unattributed_us == 10_000
    assert out.shares["long"] > out.shares["dec"]


def test_coefficients_are_never_negative() -> None:
    """Data that pulls a term negative gets it clipped to zero, never a negative integer."""
    rng = np.random.default_rng(5)
    samples = []
    for s in range(50):
        n = int(rng.integers(1, 9))
        parts = [Participant(f"r{s}_{i}", 0, int(rng.integers(0, 500)), 1) for i in range(n)]
        # time falls with context: an unconstrained fit would give δ < 0
        t = 5000 + 40 * n - sum(p.context_tokens for p in parts) // 100
        samples.append((parts, t))
    model, _ = fit_cost_model(samples, "clip")
    assert min(model.alpha, model.beta, model.gamma, model.delta, model.phi) >= 0
    assert model.delta == 0 and model.alpha == 0 and model.beta == 0


def test_too_few_steps_is_a_clear_error() -> None:
    """Fewer than five usable steps raises, naming how many and what is needed."""
    samples: list[tuple[list[Participant], int]] = [([Participant("a", 1)], 10)] * 3
    samples.append(([], 50))
    with pytest.raises(ValueError, match=r"3 usable steps.*at least 5"):
        fit_cost_model(samples, "v")


def test_nnls_matches_brute_force() -> None:
    """On random small problems NNLS finds the best of all non-negative active sets."""
    rng = np.random.default_rng(11)
    for _ in range(25):
        a = rng.normal(size=(12, 4))
        b = rng.normal(size=12)
        x = nnls(a, b)
        assert (x >= 0).all()
        best = float(np.linalg.norm(b))
        for k in range(1, 5):
            for cols in itertools.combinations(range(4), k):
                sub = np.linalg.lstsq(a[:, cols], b, rcond=None)[0]
                if (sub >= 0).all():
                    best = min(best, float(np.linalg.norm(a[:, cols] @ sub - b)))
        assert float(np.linalg.norm(a @ x - b)) <= best + 1e-9

"""Token sampling: greedy, temperature and nucleus (top-p)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.runtime.sampling import SamplingParams, sample

LOGITS = np.array([0.0, 3.0, 2.9, -1.0, 1.0], dtype=np.float32)


def test_temperature_zero_is_greedy() -> None:
    """Temperature 0 always picks the largest logit."""
    rng = np.random.default_rng(0)
    assert {sample(LOGITS, SamplingParams(temperature=0.0), rng) for _ in range(50)} == {1}


def test_same_seed_same_tokens() -> None:
    """A seeded generator makes sampling reproducible."""
    params = SamplingParams(temperature=1.0, seed=7)
    a = [sample(LOGITS, params, np.random.default_rng(7)) for _ in range(20)]
    b = [sample(LOGITS, params, np.random.default_rng(7)) for _ in range(20)]
    assert a == b


def test_top_p_keeps_only_the_nucleus() -> None:
    """With top_p small enough for two tokens, only those two are ever drawn."""
    rng = np.random.default_rng(1)
    drawn = {sample(LOGITS, SamplingParams(temperature=1.0, top_p=0.7), rng) for _ in range(400)}
    assert drawn == {1, 2}


def test_temperature_one_follows_softmax() -> None:
    """At temperature 1 the empirical frequencies follow the softmax within sampling error."""
    rng = np.random.default_rng(2)
    n = 20_000
    counts = np.bincount([sample(LOGITS, SamplingParams(), rng) for _ in range(n)], minlength=5)
    probs = np.exp(LOGITS - LOGITS.max())
    probs /= probs.sum()
    assert np.all(np.abs(counts / n - probs) < 0.02)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=2, max_size=40), st.floats(0.05, 1.0), st.floats(0.01, 2.0))
def test_sample_is_always_a_valid_token(values: list[float], top_p: float, temperature: float) -> None:
    """Whatever the logits and parameters, the result is an index into the vocabulary."""
    logits = np.array(values, dtype=np.float32)
    token = sample(logits, SamplingParams(temperature=temperature, top_p=top_p), np.random.default_rng(3))
    assert 0 <= token < len(values)

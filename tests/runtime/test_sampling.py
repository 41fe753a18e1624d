"""Token sampling: greedy, temperature and nucleus (top-p)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.runtime.sampling import SamplingParams, generator, sample

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


def test_logit_bias_is_added_before_sampling() -> None:
    """+100 on a token makes it the pick; -100 on the top token removes it from greedy."""
    rng = np.random.default_rng(0)
    assert sample(LOGITS, SamplingParams(temperature=0.0, logit_bias=((3, 100.0),)), rng) == 3
    assert sample(LOGITS, SamplingParams(temperature=0.0, logit_bias=((1, -100.0),)), rng) == 2
    assert sample(LOGITS, SamplingParams(temperature=1.0, logit_bias=((4, 100.0),)), rng) == 4


def test_presence_penalty_applies_once_per_seen_token() -> None:
    """presence_penalty lowers a token that already occurred by a flat amount, whatever its count."""
    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=0.0, presence_penalty=0.2)
    assert sample(LOGITS, params, rng, {1: 1}) == 2  # 3.0 - 0.2 < 2.9
    assert sample(LOGITS, SamplingParams(temperature=0.0, presence_penalty=0.05), rng, {1: 50}) == 1


def test_frequency_penalty_scales_with_the_count() -> None:
    """frequency_penalty lowers a token by count x penalty (OpenAI's formula)."""
    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=0.0, frequency_penalty=0.06)
    assert sample(LOGITS, params, rng, {1: 1}) == 1  # 3.0 - 0.06 > 2.9
    assert sample(LOGITS, params, rng, {1: 2}) == 2  # 3.0 - 0.12 < 2.9


def test_negative_penalties_favour_repeats() -> None:
    """A negative penalty raises tokens already generated."""
    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=0.0, presence_penalty=-2.0, frequency_penalty=-0.1)
    assert sample(LOGITS, params, rng, {4: 1}) == 4  # 1.0 + 2.0 + 0.1 > 3.0


def test_every_int64_seed_gives_a_reproducible_generator() -> None:
    """Negative and extreme seeds are valid; the same seed draws the same numbers."""
    for seed in (-1, -(2**63), 2**63 - 1, 0):
        assert (
            generator(seed).integers(1 << 30, size=4).tolist()
            == generator(seed).integers(1 << 30, size=4).tolist()
        )
    assert generator(-1).integers(1 << 30) != generator(1).integers(1 << 30)


def test_a_tiny_temperature_is_greedy_not_nan() -> None:
    """The smallest positive temperature picks the top token instead of failing on inf - inf."""
    assert sample(LOGITS, SamplingParams(temperature=5e-324), np.random.default_rng(0)) == 1


def test_logits_with_no_distribution_raise_a_value_error() -> None:
    """Non-finite logits are a ValueError (the worker fails that one request), not a bad token."""
    bad = np.array([np.nan, 1.0], dtype=np.float32)
    with pytest.raises(ValueError, match="no valid distribution"):
        sample(bad, SamplingParams(), np.random.default_rng(0))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-1e4, 1e4, width=32), min_size=2, max_size=40),
    st.floats(0.0, 2.0),
    st.floats(0.0, 1.0, exclude_min=True),
    st.floats(-2.0, 2.0),
    st.floats(-2.0, 2.0),
    st.dictionaries(st.integers(0, 1), st.floats(-100, 100), max_size=2),
    st.dictionaries(st.integers(0, 39), st.integers(1, 1000), max_size=5),
    st.integers(-(2**63), 2**63 - 1),
)
def test_any_in_range_parameters_sample_a_valid_token(
    values: list[float],
    temperature: float,
    top_p: float,
    presence: float,
    frequency: float,
    bias: dict[int, float],
    counts: dict[int, int],
    seed: int,
) -> None:
    """Every value the API accepts samples a token id in the vocabulary, never an error."""
    logits = np.array(values, dtype=np.float32)
    params = SamplingParams(temperature, top_p, seed, presence, frequency, tuple(bias.items()))
    token = sample(logits, params, generator(seed), counts)
    assert 0 <= token < len(values)

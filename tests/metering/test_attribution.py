"""Attribution: exact conservation, symmetry, order independence, the default model, φ."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infermeter.core.records import Participant, StepRecord
from infermeter.metering.attribution import TOKEN_PROPORTIONAL, CostModel, attribute

counts = st.integers(min_value=0, max_value=4096)
participants = st.builds(
    Participant,
    request_id=st.sampled_from([f"req_{i}" for i in range(24)]),
    prefill_tokens=counts,
    context_tokens=counts,
    decode_tokens=st.integers(min_value=0, max_value=4),
)
models = st.builds(
    CostModel,
    version=st.just("test"),
    alpha=st.integers(0, 1000),
    beta=st.integers(0, 50),
    gamma=st.integers(0, 100_000),
    delta=st.integers(0, 100),
    phi=st.integers(0, 10**7),
)
device_us = st.integers(min_value=0, max_value=10**8)


def step_of(parts: list[Participant], t: int, *, warmup: bool = False) -> StepRecord:
    return StepRecord(1, "eng", "cpu", t, tuple(parts), warmup=warmup)


@given(st.lists(participants, max_size=32), device_us, models)
def test_conservation_is_exact(parts: list[Participant], t: int, model: CostModel) -> None:
    """Σ shares + unattributed equals the step's device_us exactly, every share >= 0."""
    out = attribute(step_of(parts, t), model)
    assert sum(out.shares.values()) + out.unattributed_us == t
    assert all(v >= 0 for v in out.shares.values())
    assert out.unattributed_us >= 0
    assert out.device_us == t and out.step_id == 1
    distinct = len({p.request_id for p in parts})
    if parts and model.predict(parts) > 0:
        assert out.unattributed_us < len(parts)
    assert set(out.shares) == {p.request_id for p in parts}
    assert len(out.shares) == distinct


@given(st.lists(participants, min_size=1, max_size=16), device_us, models, st.randoms())
def test_permutation_invariance(
    parts: list[Participant], t: int, model: CostModel, rnd: random.Random
) -> None:
    """Shuffling the participants does not change any share or the unattributed rest."""
    shuffled = list(parts)
    rnd.shuffle(shuffled)
    a, b = attribute(step_of(parts, t), model), attribute(step_of(shuffled, t), model)
    assert a.shares == b.shares and a.unattributed_us == b.unattributed_us


@given(
    st.lists(participants, max_size=8),
    st.integers(1, 6),
    counts,
    counts,
    st.integers(0, 3),
    device_us,
    models,
)
def test_identical_participants_get_identical_shares(
    others: list[Participant], k: int, pre: int, ctx: int, dec: int, t: int, model: CostModel
) -> None:
    """k participants with the same tokens get the same share, whatever else is in the batch."""
    twins = [Participant(f"twin_{i}", pre, ctx, dec) for i in range(k)]
    out = attribute(step_of(others + twins, t), model)
    assert len({out.shares[f"twin_{i}"] for i in range(k)}) == 1


@given(st.lists(participants, min_size=1, max_size=16), device_us, models)
def test_larger_modeled_cost_never_gets_less(parts: list[Participant], t: int, model: CostModel) -> None:
    """Between two distinct requests, the larger modeled cost gets at least as much time."""
    unique = list({p.request_id: p for p in parts}.values())
    out = attribute(step_of(unique, t), model)
    for a in unique:
        for b in unique:
            if model.cost(a) > model.cost(b):
                assert out.shares[a.request_id] >= out.shares[b.request_id]


@given(st.lists(st.integers(1, 2000), min_size=1, max_size=16), st.integers(0, 10**7))
def test_token_proportional_default(tokens: list[int], t: int) -> None:
    """The default model splits in proportion to new tokens, each share within 1 µs of exact."""
    parts = [Participant(f"r{i}", prefill_tokens=n) for i, n in enumerate(tokens)]
    out = attribute(step_of(parts, t), TOKEN_PROPORTIONAL)
    total = sum(tokens)
    for i, n in enumerate(tokens):
        exact_floor = t * n // total
        assert exact_floor <= out.shares[f"r{i}"] <= exact_floor + 1


def test_token_proportional_worked_example() -> None:
    """100 µs over 1, 1 and 2 tokens gives 25, 25, 50 with nothing left over."""
    parts = [Participant("a", 1), Participant("b", 0, 9, 1), Participant("c", 2)]
    out = attribute(step_of(parts, 100), TOKEN_PROPORTIONAL)
    assert out.shares == {"a": 25, "b": 25, "c": 50}
    assert out.unattributed_us == 0


def test_tied_block_that_does_not_fit_stays_unattributed() -> None:
    """10 µs over three identical requests: 3 each; the 1 µs rest is rounding, not a favourite."""
    parts = [Participant(x, 1) for x in "abc"]
    out = attribute(step_of(parts, 10), TOKEN_PROPORTIONAL)
    assert out.shares == {"a": 3, "b": 3, "c": 3}
    assert out.unattributed_us == 1


def test_largest_remainder_goes_to_largest_fraction() -> None:
    """7 µs over 1:2 tokens is 2.33 + 4.67: the larger remainder gets the leftover µs."""
    out = attribute(step_of([Participant("a", 1), Participant("b", 2)], 7), TOKEN_PROPORTIONAL)
    assert out.shares == {"a": 2, "b": 5}
    assert out.unattributed_us == 0


@given(st.lists(participants, max_size=16), device_us, models)
def test_warmup_is_all_unattributed(parts: list[Participant], t: int, model: CostModel) -> None:
    """A warmup step gives no request anything: the whole step is unattributed."""
    out = attribute(step_of(parts, t, warmup=True), model)
    assert out.shares == {}
    assert out.unattributed_us == t


def test_empty_and_zero_cost_steps_are_unattributed() -> None:
    """No participants, or an all-zero modeled cost, leaves the step unattributed."""
    assert attribute(step_of([], 500), TOKEN_PROPORTIONAL).unattributed_us == 500
    out = attribute(step_of([Participant("a", 0, 100, 0)], 500), TOKEN_PROPORTIONAL)
    assert out.shares == {"a": 0}
    assert out.unattributed_us == 500


@given(st.integers(1, 16), device_us, st.integers(1, 10**6))
def test_phi_alone_splits_equally(n: int, t: int, phi: int) -> None:
    """With only the fixed term φ, every participant gets the same share."""
    model = CostModel("phi-only", 0, 0, 0, 0, phi)
    parts = [Participant(f"r{i}", prefill_tokens=i * 7, decode_tokens=i % 2) for i in range(n)]
    out = attribute(step_of(parts, t), model)
    assert set(out.shares.values()) == {t // n}
    assert out.unattributed_us == t % n


def test_phi_is_split_equally_on_top_of_marginal_cost() -> None:
    """shareᵢ = T·(ĉᵢ + φ/n)/(Σĉ + φ): 1000 µs, ĉ = 100 and 300, φ = 600 gives 400 and 600."""
    model = CostModel("m", 1, 0, 1, 0, 600)
    parts = [Participant("a", 100), Participant("b", 300)]
    out = attribute(step_of(parts, 1000), model)
    assert out.shares == {"a": 400, "b": 600}


def test_repeated_request_id_sums_its_parts() -> None:
    """A request that appears twice in a step gets the sum of both parts."""
    parts = [Participant("a", 1), Participant("a", 1), Participant("b", 2)]
    out = attribute(step_of(parts, 100), TOKEN_PROPORTIONAL)
    assert out.shares == {"a": 50, "b": 50}


def test_full_model_terms() -> None:
    """Each coefficient weights its own term: context multiplies β for prefill and δ for decode."""
    model = CostModel("m", alpha=0, beta=1, gamma=0, delta=2, phi=0)
    assert model.cost(Participant("a", prefill_tokens=3, context_tokens=5)) == 15
    assert model.cost(Participant("a", decode_tokens=1, context_tokens=5)) == 10
    assert model.predict([]) == 0


def test_bad_inputs_are_refused() -> None:
    """Negative times, negative tokens and negative or float coefficients raise with the value."""
    with pytest.raises(ValueError, match="device_us=-1"):
        attribute(step_of([Participant("a", 1)], -1), TOKEN_PROPORTIONAL)
    with pytest.raises(ValueError, match="negative token counts"):
        attribute(step_of([Participant("a", -1)], 10), TOKEN_PROPORTIONAL)
    with pytest.raises(ValueError, match="alpha=-1"):
        CostModel("m", -1, 0, 0, 0, 0)
    with pytest.raises(ValueError, match=r"beta=0\.5"):
        CostModel("m", 1, 0.5, 0, 0, 0)  # type: ignore[arg-type]


def test_cost_model_json_round_trip() -> None:
    """A cost model survives to_json/from_json, as a dict and as text."""
    import json

    model = CostModel("fit-1", 3, 1, 40, 2, 900)
    assert CostModel.from_json(model.to_json()) == model
    assert CostModel.from_json(json.dumps(model.to_json())) == model
    with pytest.raises(ValueError, match="lacks phi"):
        CostModel.from_json({"version": "v", "alpha": 1, "beta": 0, "gamma": 1, "delta": 0})

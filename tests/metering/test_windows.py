"""Window attribution: energy closure, pro-rata overlap, idle to the pool, activity weighting."""

from __future__ import annotations

from decimal import Decimal
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infermeter.core.records import Participant, StepRecord, StepShares
from infermeter.metering.attribution import TOKEN_PROPORTIONAL, attribute
from infermeter.metering.windows import attribute_window

MS = 1_000_000  # ns


def shares(step_id: int, device_us: int, split: dict[str, int], rest: int = 0) -> StepShares:
    assert sum(split.values()) + rest == device_us
    return StepShares(step_id, device_us, split, rest)


def test_worked_example() -> None:
    """1000 mJ with 200 mJ idle: 800 mJ split 1:3 between two requests of one step."""
    step = (10 * MS, 60 * MS, shares(1, 40_000, {"a": 10_000, "b": 30_000}))
    out = attribute_window(0, 100 * MS, 1000, 2000, [step], Decimal("0.5"), Decimal("0.25"))
    assert out.idle_mj == 200
    assert out.energy_shares_mj == {"a": 200, "b": 600}
    assert out.unattributed_energy_mj == 200
    assert out.device_ms == {"a": Decimal("10"), "b": Decimal("30")}
    assert out.sm_weighted_ms == {"a": Decimal("5"), "b": Decimal("15")}
    assert out.dram_weighted_ms == {"a": Decimal("2.5"), "b": Decimal("7.5")}


def test_edge_step_counts_pro_rata() -> None:
    """A step half inside the window brings half its shares and half the weight."""
    inside = (20 * MS, 40 * MS, shares(1, 20_000, {"a": 20_000}))
    across = (90 * MS, 110 * MS, shares(2, 20_000, {"b": 20_000}))
    out = attribute_window(0, 100 * MS, 900, 0, [inside, across], None, None)
    assert out.device_ms == {"a": Decimal(20), "b": Decimal(10)}
    assert out.energy_shares_mj == {"a": 600, "b": 300}
    assert out.sm_weighted_ms is None and out.dram_weighted_ms is None


def test_unattributed_step_time_goes_to_the_pool() -> None:
    """A step's unattributed µs take their part of the energy into the pool."""
    step = (0, 50 * MS, shares(1, 1000, {"a": 750}, rest=250))
    out = attribute_window(0, 100 * MS, 400, 0, [step], 1.0, 1.0)
    assert out.energy_shares_mj == {"a": 300} and out.unattributed_energy_mj == 100


def test_idle_window_and_below_idle_energy_are_all_pool() -> None:
    """No steps, or energy at or below idle, leaves everything unattributed."""
    out = attribute_window(0, 100 * MS, 5000, 80_000, [], 0.0, 0.0)
    assert out.energy_shares_mj == {} and out.unattributed_energy_mj == 5000
    step = (0, 10 * MS, shares(1, 10_000, {"a": 10_000}))
    low = attribute_window(0, 100 * MS, 7000, 80_000, [step], None, None)
    assert low.energy_shares_mj == {"a": 0} and low.unattributed_energy_mj == 7000


def test_zero_length_step_counts_when_it_starts_inside() -> None:
    """An instantaneous step counts whole if it starts in [start, end), else not at all."""
    at_start = (0, 0, shares(1, 5, {"a": 5}))
    at_end = (100 * MS, 100 * MS, shares(2, 5, {"b": 5}))
    out = attribute_window(0, 100 * MS, 10, 0, [at_start, at_end], None, None)
    assert out.energy_shares_mj == {"a": 10}


def test_bad_inputs_raise() -> None:
    """Empty windows, negative energy, reversed steps and percent activities are refused."""
    with pytest.raises(ValueError, match="empty"):
        attribute_window(5, 5, 0, 0, [], None, None)
    with pytest.raises(ValueError, match="reset"):
        attribute_window(0, 1, -1, 0, [], None, None)
    with pytest.raises(ValueError, match="ends"):
        attribute_window(0, 10, 0, 0, [(5, 4, shares(1, 0, {}))], None, None)
    with pytest.raises(ValueError, match="divide a percentage"):
        attribute_window(0, 10, 0, 0, [], 87.0, None)


step_strategy = st.tuples(
    st.integers(-50 * MS, 150 * MS),
    st.integers(0, 60 * MS),
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d", "e"]),
            st.integers(0, 512),
            st.integers(0, 2),
        ),
        max_size=6,
    ),
    st.integers(0, 50_000),
)


def build(
    specs: list[tuple[int, int, list[tuple[str, int, int]], int]],
) -> list[tuple[int, int, StepShares]]:
    out = []
    for i, (start, dur, parts, us) in enumerate(specs):
        ps = tuple(Participant(r, p, 0, d) for r, p, d in parts)
        out.append((start, start + dur, attribute(StepRecord(i, "e", "cpu", us, ps), TOKEN_PROPORTIONAL)))
    return out


@given(
    st.lists(step_strategy, max_size=12),
    st.integers(0, 10**7),
    st.integers(0, 500_000),
    st.one_of(st.none(), st.decimals(0, 1, places=3)),
)
def test_energy_closure(
    specs: list[tuple[int, int, list[tuple[str, int, int]], int]],
    energy: int,
    idle_mw: int,
    sm: Decimal | None,
) -> None:
    """Σ attributed energy + unattributed pool == the counter delta, every share >= 0."""
    steps = build(specs)
    out = attribute_window(0, 100 * MS, energy, idle_mw, steps, sm, sm)
    assert sum(out.energy_shares_mj.values()) + out.unattributed_energy_mj == energy
    assert all(v >= 0 for v in out.energy_shares_mj.values())
    assert out.unattributed_energy_mj >= min(energy, out.idle_mj)
    # window device time never exceeds the steps' device time
    assert sum(out.device_ms.values()) <= Decimal(sum(s.device_us for _, _, s in steps)) / 1000
    if sm is not None and out.sm_weighted_ms is not None:
        for rid, ms in out.device_ms.items():
            assert abs(out.sm_weighted_ms[rid] - ms * sm) <= Decimal("0.000001")


@given(st.lists(step_strategy, max_size=8), st.integers(0, 10**7), st.integers(1, 4))
def test_windows_tiling_a_step_conserve_its_device_time(
    specs: list[tuple[int, int, list[tuple[str, int, int]], int]], energy: int, k: int
) -> None:
    """Splitting time into adjacent windows conserves each request's device ms (to rounding)."""
    steps = build(specs)
    whole = attribute_window(-50 * MS, 210 * MS, energy, 0, steps, None, None)
    edges = [-50 * MS + i * (260 * MS) // k for i in range(k + 1)]
    parts = [attribute_window(a, b, energy, 0, steps, None, None) for a, b in pairwise(edges)]
    for rid, ms in whole.device_ms.items():
        split = sum(p.device_ms.get(rid, Decimal(0)) for p in parts)
        assert abs(split - ms) <= Decimal("0.000001") * k


@given(st.integers(1, 6), st.integers(0, 10**6), st.integers(1, 10**5))
def test_identical_requests_get_identical_energy(n: int, energy: int, us: int) -> None:
    """Requests with identical shares in the window get identical energy."""
    split = {f"r{i}": us for i in range(n)}
    step = (0, 10 * MS, shares(1, us * n, split))
    out = attribute_window(0, 100 * MS, energy, 0, [step], None, None)
    assert len(set(out.energy_shares_mj.values())) == 1
    assert out.unattributed_energy_mj < n

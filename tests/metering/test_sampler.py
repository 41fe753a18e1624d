"""Window sampler: closure and conservation over windows, the GPM guards, threads and timing."""

from __future__ import annotations

import itertools
import math
import threading
import time
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.core.records import StepShares
from infermeter.metering.sampler import (
    COUNTER_RESET,
    NO_ACTIVITY,
    SHORT,
    ZERO_OR_NAN,
    ClosedWindow,
    WindowSampler,
)
from infermeter.metering.sources import Sample, ScriptedSource

MS = 1_000_000  # ns


def run(
    samples: list[Sample], steps: list[tuple[int, int, StepShares]], idle_power_mw: int = 0
) -> tuple[list[ClosedWindow], WindowSampler]:
    """Drive a sampler by hand: every step recorded first, then one poll per sample."""
    published: list[ClosedWindow] = []
    sampler = WindowSampler(ScriptedSource(samples=samples), published.append, idle_power_mw=idle_power_mw)
    for start, end, shares in steps:
        sampler.record_step(start, end, shares)
    for _ in samples:
        sampler.poll()
    sampler.flush()
    return published, sampler


def share(step_id: int, split: dict[str, int], rest: int = 0) -> StepShares:
    return StepShares(step_id, sum(split.values()) + rest, split, rest)


def test_a_window_splits_energy_above_idle_by_step_shares() -> None:
    """100 ms, 1,000 mJ, 8 W idle (800 mJ): the 200 mJ above idle go to a, b by device time."""
    samples = [Sample(0, 0), Sample(100 * MS, 1_000, 0.5, 0.2, 0.25, 100)]
    step = (10 * MS, 60 * MS, share(1, {"a": 10_000, "b": 30_000}, 10_000))
    (window,), sampler = run(samples, [step], idle_power_mw=8_000)
    a = window.attribution
    assert a.idle_mj == 800
    assert a.energy_shares_mj == {"a": 40, "b": 120}  # 200 x 10/50 and 200 x 30/50
    assert a.unattributed_energy_mj == 1_000 - 160
    assert a.sm_weighted_ms == {"a": Decimal("5.000000"), "b": Decimal("15.000000")}
    assert window.valid and window.reason is None and window.steps == 1
    assert sampler.stats.valid == 1 and sampler.stats.rejected == 0


steps_strategy = st.lists(
    st.tuples(
        st.integers(0, 900),
        st.integers(0, 200),
        st.dictionaries(st.sampled_from("abcd"), st.integers(0, 50_000), min_size=1),
        st.integers(0, 3),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(steps_strategy, st.lists(st.integers(0, 5_000), min_size=2, max_size=12), st.integers(0, 50_000))
def test_energy_closure_and_device_time_conservation(
    raw_steps: list[tuple[int, int, dict[str, int], int]], increments: list[int], idle_mw: int
) -> None:
    """Per window Σ shares + pool = the counter's delta; over windows tiling every step, each
    request's device ms add up to its step shares (within the 1 ns rounding per window)."""
    samples = []
    energy = 0
    for i, inc in enumerate(increments):
        energy += inc
        samples.append(Sample(i * 100 * MS, energy, 0.5, 0.1, 0.3, 1))
    end_of_time = (len(increments) - 1) * 100 * MS
    steps = []
    for i, (start_ms, length_ms, split, rest) in enumerate(sorted(raw_steps, key=lambda r: (r[0], r[1]))):
        start = min(start_ms * MS, end_of_time - 1)
        end = min(start + length_ms * MS, end_of_time)
        steps.append((start, max(end, start + 1), share(i, split, rest)))
    windows, sampler = run(samples, steps, idle_power_mw=idle_mw)
    assert len(windows) == len(increments) - 1
    for w, inc in zip(windows, increments[1:], strict=True):
        a = w.attribution
        assert a.energy_mj == inc
        assert sum(a.energy_shares_mj.values()) + a.unattributed_energy_mj == inc
        assert all(v >= 0 for v in a.energy_shares_mj.values())
    assert sampler.stats.energy_mj == energy - increments[0]
    assert sampler.stats.attributed_energy_mj + sampler.stats.unattributed_energy_mj == energy - increments[0]
    expected: dict[str, int] = {}
    for _, _, s in steps:
        for rid, us in s.shares.items():
            expected[rid] = expected.get(rid, 0) + us
    got: dict[str, Decimal] = {}
    for w in windows:
        for rid, ms in w.attribution.device_ms.items():
            got[rid] = got.get(rid, Decimal(0)) + ms
    for rid, us in expected.items():
        slack = Decimal(len(windows)) * Decimal("0.000001")
        assert abs(got.get(rid, Decimal(0)) - Decimal(us) / 1000) <= slack


def test_short_window_activity_is_rejected_and_counted() -> None:
    """A 60 ms GPM window is rejected: energy still metered, weighted ms not (None)."""
    samples = [Sample(0, 0), Sample(60 * MS, 600, 0.9, 0.5, 0.4, 1)]
    (window,), sampler = run(samples, [(0, 50 * MS, share(1, {"a": 50_000}))])
    assert not window.valid and window.reason == SHORT
    assert window.attribution.sm_weighted_ms is None
    assert window.attribution.energy_mj == 600
    assert sampler.stats.rejected_by_reason == {SHORT: 1}


@pytest.mark.parametrize(("sm", "dram"), [(0.0, 0.3), (math.nan, 0.3), (0.5, math.nan)])
def test_zero_or_nan_activity_while_steps_ran_is_rejected(sm: float, dram: float) -> None:
    """SM 0 or NaN, or DRAM NaN, in a window where steps ran: GPM's false zeros, rejected."""
    samples = [Sample(0, 0), Sample(100 * MS, 900, sm, 0.1, dram, 1)]
    (window,), sampler = run(samples, [(10 * MS, 20 * MS, share(1, {"a": 10_000}))])
    assert window.reason == ZERO_OR_NAN and not window.valid
    assert window.attribution.sm_weighted_ms is None
    assert sum(window.attribution.energy_shares_mj.values()) > 0  # energy is still metered
    assert sampler.stats.rejected == 1


def test_idle_window_with_zero_activity_is_valid() -> None:
    """No step ran: 0 activity is the truth, not a false zero; all energy goes to the pool."""
    samples = [Sample(0, 0), Sample(100 * MS, 8_000, 0.0, 0.0, math.nan, 1)]
    (window,), sampler = run(samples, [])
    assert window.valid and window.steps == 0
    assert window.attribution.unattributed_energy_mj == 8_000
    assert sampler.stats.rejected == 0


def test_counter_reset_gives_an_energy_less_window() -> None:
    """A counter that went backwards (driver reload) meters no energy and is counted."""
    samples = [Sample(0, 5_000), Sample(100 * MS, 10, 0.5, 0.1, 0.2, 1)]
    (window,), sampler = run(samples, [(0, MS, share(1, {"a": 1_000}))])
    assert window.reason == COUNTER_RESET and window.attribution.energy_mj == 0
    assert sampler.stats.rejected_by_reason == {COUNTER_RESET: 1}


def test_source_without_activity_meters_energy_and_is_not_rejected() -> None:
    """No GPM (None activities): energy attributed, weighted ms absent, not a rejection."""
    samples = [Sample(0, 0), Sample(100 * MS, 1_000)]
    (window,), sampler = run(samples, [(0, 50 * MS, share(1, {"a": 50_000}))])
    assert window.reason == NO_ACTIVITY
    assert window.attribution.energy_shares_mj == {"a": 1_000}
    assert sampler.stats.no_activity == 1 and sampler.stats.rejected == 0


def test_a_step_recorded_late_still_counts_in_its_window() -> None:
    """Windows are attributed one tick late: a step that ended before the edge but was
    recorded after the closing read still gets its window's energy."""
    published: list[ClosedWindow] = []
    samples = [
        Sample(0, 0),
        Sample(100 * MS, 1_000, 0.5, 0.1, 0.2, 1),
        Sample(200 * MS, 1_000, 0.0, 0.0, 0.0, 1),
    ]
    sampler = WindowSampler(ScriptedSource(samples=samples), published.append, idle_power_mw=0)
    sampler.poll()
    sampler.poll()  # closes [0, 100 ms); nothing published yet
    assert published == []
    sampler.record_step(90 * MS, 99 * MS, share(1, {"late": 9_000}))
    sampler.poll()
    assert published[0].attribution.energy_shares_mj == {"late": 1_000}


def test_idle_power_is_learned_from_windows_without_steps() -> None:
    """With no idle figure given, the median power of step-free windows becomes idle."""
    samples = [Sample(i * 100 * MS, i * 8_000) for i in range(4)]
    source = ScriptedSource(samples=samples, idle_power_mw=None)
    sampler = WindowSampler(source)
    assert sampler.idle_power_mw == 0
    for _ in samples:
        sampler.poll()
    sampler.flush()
    assert sampler.idle_power_mw == 80_000


def test_a_full_step_ring_drops_the_oldest_and_counts() -> None:
    """The ring is bounded; overflow drops the oldest step and is counted for operators."""
    sampler = WindowSampler(ScriptedSource(), ring_size=2)
    for i in range(3):
        sampler.record_step(i, i + 1, share(i, {"a": 1}))
    assert sampler.stats.dropped_steps == 1


def test_the_energy_counter_is_read_on_the_sampler_thread_only() -> None:
    """Steps recorded from the request path never read the source; the thread does, and
    consecutive windows tile time (each starts where the last ended)."""
    published: list[ClosedWindow] = []
    source = ScriptedSource(power_mw=100_000, idle_power_mw=0)
    sampler = WindowSampler(source, published.append, window_ms=20, min_activity_ms=20)
    for i in range(1_000):
        sampler.record_step(i, i + 1, share(i, {"a": 1}))
    assert source.reads == 0
    sampler.start()
    deadline = time.monotonic() + 5
    while len(published) < 3 and time.monotonic() < deadline:
        now = time.monotonic_ns()
        sampler.record_step(now - 1_000_000, now, share(0, {"live": 1_000}))
        time.sleep(0.005)
    thread = sampler._thread
    assert thread is not None
    sampler.stop(flush=False)
    assert len(published) >= 3
    assert source.read_threads == {thread.ident}
    assert threading.get_ident() not in source.read_threads
    for before, after in itertools.pairwise(published):
        assert after.attribution.window_start_ns == before.attribution.window_end_ns
    assert all(w.attribution.window_end_ns - w.attribution.window_start_ns >= 20 * MS for w in published)


def test_a_failing_source_skips_a_tick_and_is_counted() -> None:
    """A read that raises is counted; the next good read closes a window spanning the gap."""

    class Flaky(ScriptedSource):
        def read(self) -> Sample:
            if self.reads == 1:
                self.reads += 1
                raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
            return super().read()

    samples = [Sample(0, 0), Sample(200 * MS, 2_000, 0.5, 0.1, 0.2, 1)]
    published: list[ClosedWindow] = []
    sampler = WindowSampler(Flaky(samples=samples), published.append, idle_power_mw=0)
    for _ in range(3):
        sampler.poll()
    sampler.flush()
    assert sampler.stats.read_errors == 1
    assert [w.attribution.energy_mj for w in published] == [2_000]

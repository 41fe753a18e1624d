"""Attribution accuracy: solo vs batched, exact conservation, and the CPU benchmark."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.cli.main import main
from infermeter.metering import accuracy as acc
from infermeter.metering.attribution import TOKEN_PROPORTIONAL, CostModel
from infermeter.runtime.engine import SeqInput
from infermeter.runtime.fake_engine import FakeCost, FakeEngine

# No fixed per-step cost: each request's batched cost is exactly its solo cost.
ADDITIVE = FakeCost(fixed_us=0.0, per_prefill_token_us=10.0, per_decode_token_us=50.0)
EXACT = CostModel("exact", 10, 0, 50, 0, 0)


class FakeRunner:
    def __init__(self, cost: FakeCost) -> None:
        self.engine = FakeEngine(cost=cost)
        self.vocab_size = self.engine.info.vocab_size

    def run(self, batch: Sequence[tuple[str, Sequence[int]]]) -> int:
        return self.engine.step([SeqInput(s, list(t)) for s, t in batch]).device_us

    def release(self, seq_id: str) -> None:
        self.engine.release(seq_id)


def test_the_exact_model_reproduces_solo_costs() -> None:
    """With an additive engine and its exact model, every request's error is 0."""
    runner = FakeRunner(ADDITIVE)
    specs = acc.request_set(6, runner.vocab_size)
    solo = acc.solo_device_us(runner, specs, repeats=1)
    steps = acc.batched_steps(runner, specs, stagger=1, runs=1)
    exact = acc.evaluate(steps, solo, EXACT)
    assert exact.conservation_error_us == 0
    assert exact.raw_median == 0 and exact.raw_p95 == 0 and exact.share_p95 == 0
    assert all(a == s for a, s in exact.per_request.values())
    proportional = acc.evaluate(steps, solo, TOKEN_PROPORTIONAL)
    assert proportional.conservation_error_us == 0
    assert proportional.share_median > 0.05  # prefill and decode tokens are not alike


def test_batched_runs_share_one_schedule() -> None:
    """Repeated batched runs give one schedule of steps, each with its median time."""
    runner = FakeRunner(FakeCost())
    specs = acc.request_set(4, runner.vocab_size)
    once = acc.batched_steps(runner, specs, runs=1)
    thrice = acc.batched_steps(runner, specs, runs=3)
    assert [s.participants for s in once] == [s.participants for s in thrice]
    assert [s.device_us for s in once] == [s.device_us for s in thrice]  # scripted: no noise
    assert {p.request_id for s in once for p in s.participants} == {x.request_id for x in specs}


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 8),
    st.integers(0, 3),
    st.tuples(*(st.integers(0, 1_000_000) for _ in range(5))),
    st.integers(0, 9),
)
def test_conservation_is_exact_for_any_model(
    count: int, stagger: int, coefficients: tuple[int, ...], seed: int
) -> None:
    """Σ attributed + unattributed = Σ measured step time, in integers, whatever the model."""
    runner = FakeRunner(FakeCost(fixed_us=137.0, per_prefill_token_context_us=0.01))
    specs = acc.request_set(count, runner.vocab_size, seed=seed)
    solo = acc.solo_device_us(runner, specs, repeats=1)
    steps = acc.batched_steps(runner, specs, stagger=stagger)
    report = acc.evaluate(steps, solo, CostModel("any", *coefficients))
    assert report.conservation_error_us == 0
    assert report.attributed_us + report.unattributed_us == report.measured_us


def test_cpu_benchmark_reports_conservation_and_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bench --accuracy --quick` on ONNX Runtime: conservation exactly 0 before and after
    calibration, and median / p95 errors computed (their size depends on the machine)."""
    out = tmp_path / "accuracy.json"
    assert main(["bench", "--accuracy", "--quick", "--json", str(out)]) == 0
    assert "conservation" in capsys.readouterr().out
    result = json.loads(out.read_text())
    for name in ("before", "after"):
        r = result[name]
        assert r["conservation_error_us"] == 0
        assert r["measured_us"] > 0 and r["solo_us"] > 0
        for key in ("share_median", "share_p95", "raw_median", "raw_p95"):
            assert math.isfinite(r[key]) and r[key] >= 0
        assert r["share_p95"] >= r["share_median"]
    assert result["after"]["model"].startswith("fit-")

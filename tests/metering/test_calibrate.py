# ruff: noqa: RUF002  (Greek letters are the cost model's coefficient names)
"""Calibration: fitted cost models, per-phase RU factors, versioned files the service loads."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import pytest

from infermeter.cli.calibrate import EngineRunner
from infermeter.cli.main import main
from infermeter.core.records import UsageRecord
from infermeter.core.types import Phase, Precision, ServiceTier
from infermeter.metering import calibrate as cal
from infermeter.metering import calibrations
from infermeter.metering.ru import SEED_TABLE
from infermeter.runtime.engine import SeqInput
from infermeter.runtime.fake_engine import FakeCost, FakeEngine
from infermeter.runtime.sampling import SamplingParams
from infermeter.runtime.worker import GenerationRequest
from tests.conftest import fake_service

COST = FakeCost(
    fixed_us=400.0,
    per_prefill_token_us=12.0,
    per_prefill_token_context_us=0.05,
    per_decode_token_us=60.0,
    per_decode_token_context_us=0.5,
)
RATES = cal.ReferenceRates("cpu", "numpy", "float32", 0.1, 20.0)
SHAPE = cal.ModelShape.decoder(4, 128, 260, 4, 4096)


class FakeRunner:
    """A FakeEngine with scripted, exact step times, seen as a StepRunner."""

    def __init__(self, cost: FakeCost = COST) -> None:
        self.engine = FakeEngine(cost=cost)
        self.vocab_size = self.engine.info.vocab_size

    def run(self, batch: Sequence[tuple[str, Sequence[int]]]) -> int:
        return self.engine.step([SeqInput(s, list(t)) for s, t in batch]).device_us

    def release(self, seq_id: str) -> None:
        self.engine.release(seq_id)


def test_cost_steps_recover_the_engine_cost_within_rounding() -> None:
    """On exact scripted times the fit recovers α, γ and φ and its MAPE is about zero."""
    from infermeter.metering.costfit import FS_PER_US, fit_cost_model

    steps = cal.cost_steps(FakeRunner())
    assert len({len(parts) for parts, _ in steps}) >= 3  # varied batch sizes
    assert any(p.decode_tokens for parts, _ in steps for p in parts)
    assert any(p.prefill_tokens and p.context_tokens for parts, _ in steps for p in parts)
    model, mape = fit_cost_model(steps, "t")
    assert mape < Decimal("1")
    assert model.alpha / FS_PER_US == pytest.approx(12.0, rel=0.05)
    assert model.gamma / FS_PER_US == pytest.approx(60.0, rel=0.1)
    assert model.phi / FS_PER_US == pytest.approx(400.0, rel=0.05)


def test_device_table_replaces_only_this_device() -> None:
    """A new version: the device's rows are the measured blend, every other row unchanged."""
    probes = (cal.PhaseProbe("prefill", 4, 64, 0, 50.0, 0.9), cal.PhaseProbe("decode", 8, 1, 64, 200.0, 0.2))
    table = cal.device_table(SEED_TABLE, "cpu", RATES, probes, "calib-test")
    assert table.version == "calib-test"
    expected = Decimal(f"{0.9 * RATES.r_compute + 0.1 * RATES.r_bw:.4g}")
    for precision in (Precision.FP32, Precision.INT8):
        assert table.factor("cpu", Phase.PREFILL, precision) == expected
    for device in ("H100-SXM", "A100-SXM4-80GB", "L4"):
        for phase in Phase:
            assert table.factor(device, phase, Precision.FP16) == SEED_TABLE.factor(
                device, phase, Precision.FP16
            )


def test_roofline_compute_fraction_orders_the_phases() -> None:
    """Prefill is more compute-bound than decode; both fractions lie in [0, 1]."""
    prefill, decode = cal.probe_phases(FakeRunner(), SHAPE, RATES, quick=True)
    assert 0 <= decode.compute_fraction < prefill.compute_fraction <= 1
    assert prefill.us_per_token > 0 and decode.us_per_token > 0


def test_saved_calibrations_load_newest_table_and_each_engines_newest_model(tmp_path: Path) -> None:
    """Versioned files never overwrite; the newest table wins, cost models merge by engine."""
    assert cal.load_latest(tmp_path) is None
    runner = FakeRunner()
    first = cal.calibrate(
        "cpu", RATES, SEED_TABLE, {"e1": (runner, SHAPE)}, quick=True, version="calib-cpu-1"
    )
    second = cal.calibrate(
        "cpu", RATES, first.ru_table, {"e2": (runner, SHAPE)}, quick=True, version="calib-cpu-2"
    )
    paths = [cal.save(first, tmp_path), cal.save(second, tmp_path)]
    assert all(p.is_file() for p in paths) and paths[0] != paths[1]
    with pytest.raises(FileExistsError):
        cal.save(first, tmp_path)
    loaded = cal.load_latest(tmp_path)
    assert loaded is not None
    assert loaded.ru_table.version == "calib-cpu-2"
    assert set(loaded.cost_models) == {"e1", "e2"}
    again = cal.Calibration.from_json(json.loads(paths[1].read_text()))
    assert again.cost_models["e2"].model == second.cost_models["e2"].model


def test_the_service_uses_the_active_calibration_at_start(tmp_path: Path) -> None:
    """Records name the calibrated RU-table and cost-model versions once it is active."""
    home = tmp_path / "home"
    engine = FakeEngine(cost=COST)
    calibration = cal.calibrate(
        "cpu", RATES, SEED_TABLE, {engine.info.engine_id: (FakeRunner(), SHAPE)}, quick=True
    )
    cal.save(calibration, home)
    calibrations.activate(home, calibration.version)
    service = fake_service(home, engine)
    service.start()
    try:
        done = threading.Event()
        records: list[object] = []

        def finished(r: object) -> None:
            records.append(r)
            done.set()

        service.worker.submit(
            GenerationRequest(
                request_id="r1",
                tenant_id="t",
                model="tiny-gpt",
                engine_id=engine.info.engine_id,
                tier=ServiceTier.DEFAULT,
                prompt_ids=[1, 2, 3],
                max_tokens=3,
                sampling=SamplingParams(temperature=0.0),
                on_finish=finished,
            )
        )
        assert done.wait(30)
    finally:
        service.stop()
    record = records[0]
    assert isinstance(record, UsageRecord)
    assert record.ru_table_version == calibration.version
    fitted = calibration.cost_models[engine.info.engine_id].model.version
    assert record.cost_model_version == fitted


def test_calibrate_command_on_the_cpu_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`infermeter calibrate --quick --json` measures the ORT engine and writes a version."""
    home = tmp_path / "home"
    monkeypatch.setenv("INFERMETER_INT8", "0")  # the FP32 engine alone keeps this quick
    assert main(["--home", str(home), "calibrate", "--quick", "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert Path(data["path"]).is_file()
    assert data["rates"]["gemm_tflops"] > 0 and data["rates"]["copy_gbps"] > 0
    assert {p["phase"] for p in data["probes"]} == {"prefill", "decode"}
    for fitted in data["cost_models"].values():
        assert Decimal(fitted["mape_percent"]) >= 0 and fitted["steps"] >= 5
    assert calibrations.find(home, data["version"]).path == Path(data["path"])
    assert data["active"] == (data["gate_problem"] is None)


def test_engine_runner_reports_device_time() -> None:
    """The CLI's adapter runs a batch on an Engine and returns its device µs."""
    runner = EngineRunner(FakeEngine(cost=COST))
    assert runner.run([("a", [1, 2, 3])]) == (400 + 3 * 12)

"""Calibration is a change to prices: a candidate prices nothing until it passes the gate or is
activated by name; activation and rollback take effect at the next start."""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from infermeter.cli import calibrate as cli_calibrate
from infermeter.cli.main import main
from infermeter.config import Settings
from infermeter.core.records import UsageRecord
from infermeter.core.types import ServiceTier
from infermeter.metering import calibrate as cal
from infermeter.metering import calibrations
from infermeter.metering.ru import SEED_TABLE
from infermeter.runtime.fake_engine import FakeEngine
from infermeter.runtime.sampling import SamplingParams
from infermeter.runtime.worker import GenerationRequest
from tests.conftest import fake_service
from tests.metering.test_calibrate import COST, RATES, SHAPE, FakeRunner

ENGINE = FakeEngine(cost=COST).info.engine_id


def _calibration(version: str, mape: str) -> cal.Calibration:
    """A real fit on scripted steps, with its MAPE set to ``mape`` and its factors tripled."""
    fit = cal.calibrate(
        "cpu", RATES, SEED_TABLE, {ENGINE: (FakeRunner(), SHAPE)}, quick=True, version=version
    )
    tripled = type(fit.ru_table)(version, {k: v * 3 for k, v in fit.ru_table.factors.items()})
    fitted = {e: replace(f, mape_percent=Decimal(mape)) for e, f in fit.cost_models.items()}
    return replace(fit, ru_table=tripled, cost_models=fitted)


def _priced(home: Path) -> UsageRecord:
    """One request on a fresh start of the service in ``home``: its usage record."""
    service = fake_service(home, FakeEngine(cost=COST))
    service.start()
    done = threading.Event()
    got: list[object] = []

    def finished(r: object) -> None:
        got.append(r)
        done.set()

    try:
        service.worker.submit(
            GenerationRequest(
                request_id=f"r-{uuid.uuid4().hex}",  # unique: one home sees several starts
                tenant_id="t", model="tiny-gpt", engine_id=ENGINE,
                tier=ServiceTier.DEFAULT, prompt_ids=[1, 2, 3], max_tokens=3,
                sampling=SamplingParams(temperature=0.0),
                on_finish=finished,
            )
        )  # fmt: skip
        assert done.wait(30)
    finally:
        service.stop()
    record = got[0]
    assert isinstance(record, UsageRecord)
    return record


def _run_calibrate(monkeypatch: pytest.MonkeyPatch, home: Path, result: cal.Calibration, *flags: str) -> int:
    """`infermeter calibrate` with the measurement replaced by ``result`` (the gate is real)."""

    def measured(settings: Settings, *_: Any) -> tuple[cal.Calibration, Path]:
        return result, cal.save(result, settings.home)

    monkeypatch.setattr(cli_calibrate, "run_calibration", measured)
    return main(["calibrate", "--home", str(home), *flags])


def test_a_bad_calibration_does_not_change_prices_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 217 % MAPE fit is saved as a candidate only: the next start prices with the seed table."""
    home = tmp_path / "home"
    before = _priced(tmp_path / "before")
    assert _run_calibrate(monkeypatch, home, _calibration("calib-cpu-bad", "217")) == 0
    shown = capsys.readouterr().out
    assert "candidate only" in shown and "217 % MAPE" in shown and "15 % gate" in shown
    after = _priced(home)
    assert after.ru_table_version == SEED_TABLE.version
    assert after.cost == before.cost


def test_a_good_calibration_activates_itself_and_shows_the_price_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under the gate it is active at the next start; the CLI showed the reference price (factors tripled)."""
    home = tmp_path / "home"
    good = _calibration("calib-cpu-good", "3.5")
    assert _run_calibrate(monkeypatch, home, good) == 0
    shown = capsys.readouterr().out
    assert "reference request (100 prompt + 100 completion tokens)" in shown and "active" in shown
    record = _priced(home)
    assert record.ru_table_version == "calib-cpu-good"
    assert record.cost_model_version == good.cost_models[ENGINE].model.version


def test_activate_by_name_then_rollback_restores_the_previous_prices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`calibrate activate V` overrides the gate; `calibrate rollback` returns to the seed table."""
    home = tmp_path / "home"
    seed_cost = _priced(tmp_path / "seed").cost
    _run_calibrate(monkeypatch, home, _calibration("calib-cpu-bad", "217"))
    assert main(["calibrate", "activate", "calib-cpu-bad", "--home", str(home)]) == 0
    activated = _priced(home)
    assert activated.ru_table_version == "calib-cpu-bad" and activated.cost > seed_cost
    capsys.readouterr()
    assert main(["calibrate", "list", "--json", "--home", str(home)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["active"] == "calib-cpu-bad"
    assert listed["calibrations"][0]["passes_gate"] is False
    assert main(["calibrate", "rollback", "--home", str(home)]) == 0
    rolled = _priced(home)
    assert (rolled.ru_table_version, rolled.cost) == (SEED_TABLE.version, seed_cost)
    assert main(["calibrate", "rollback", "--home", str(home)]) == 2  # nothing left to roll back
    assert main(["calibrate", "activate", "calib-cpu-nope", "--home", str(home)]) == 3


def test_activate_flag_activates_a_calibration_that_fails_the_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`calibrate --activate` is the operator's override, named in the activation history."""
    home = tmp_path / "home"
    assert _run_calibrate(monkeypatch, home, _calibration("calib-cpu-bad", "217"), "--activate") == 0
    assert calibrations.active_version(home) == "calib-cpu-bad"

"""Serving engines: first start builds FP32 + INT8, later starts load them from the index."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from infermeter.app.engines import engine_status, gate_refusal, load_default_engines
from infermeter.config import Settings, load_settings
from infermeter.core.errors import StaleEngine
from infermeter.core.timing import NullTimer
from infermeter.core.types import Precision
from infermeter.runtime.compile.builder import build_engine
from infermeter.runtime.compile.metadata import BuildArgs, EngineRecord
from infermeter.runtime.compile.testmodel import write_test_model
from infermeter.runtime.engine_store import EngineStore, file_sha256
from infermeter.runtime.tokenizer import ByteTokenizer, HFTokenizer


def settings(home: Path, **values: object) -> Settings:
    return load_settings({"home": home, **values}, env={})


def engine_ids(home: Path, **values: object) -> dict[str, object]:
    """engine_id -> tokenizer of what load_default_engines serves (engines closed again)."""
    loaded = load_default_engines(settings(home, **values), NullTimer)
    for item in loaded:
        item.engine.close()
    return {item.engine.info.engine_id: item.tokenizer for item in loaded}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home after one first start (the built-in FP32 and INT8 engines built)."""
    path = tmp_path_factory.mktemp("served")
    engine_ids(path)
    return path


def copy_of(home: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(home, tmp_path / "home"))


def records(home: Path) -> list[EngineRecord]:
    store = EngineStore(home)
    try:
        return list(store.list())
    finally:
        store.close()


def test_first_start_builds_and_serves_fp32_and_int8(home: Path) -> None:
    """The built-in model gets an FP32 and an INT8 engine, each with the byte tokenizer."""
    served = engine_ids(home)
    assert sorted(k.split("-")[3] for k in served) == ["fp32", "int8"]
    assert all(isinstance(t, ByteTokenizer) for t in served.values())
    assert {r.engine_id for r in records(home)} == set(served)


def test_later_starts_reuse_the_index(home: Path) -> None:
    """A second start rebuilds nothing: the same records, the same build times."""
    before = records(home)
    engine_ids(home)
    assert records(home) == before


def test_loaded_engines_carry_their_records(home: Path) -> None:
    """Engine info has the record's id, profiles, sha256, cost model and drift."""
    loaded = load_default_engines(settings(home), NullTimer)
    by_precision = {item.engine.info.precision: item.engine.info for item in loaded}
    int8 = by_precision[Precision.INT8]
    assert [p.name for p in int8.profiles][:2] == ["prefill", "decode-past-128"]
    assert int8.engine_id.endswith(int8.extra["sha256"][:8])
    assert int8.extra["drift"]["token_agreement"] > 0.5
    assert int8.extra["cost_model"]["version"] == "token-proportional-v1"
    for item in loaded:
        item.engine.close()


def test_no_int8_serves_fp32_only(tmp_path: Path) -> None:
    """--no-int8 builds and serves the FP32 engine alone."""
    served = engine_ids(tmp_path / "h", int8=False)
    assert [k.split("-")[3] for k in served] == ["fp32"]


def test_a_user_model_directory_is_served_with_its_own_tokenizer(home: Path, tmp_path: Path) -> None:
    """--model-dir builds the user model's FP32 and INT8 engines and serves them with its own
    tokenizer; the INT8 one only if it passed the economy gate (the 2-layer test model's INT8
    is usually no faster than its FP32, and is then indexed but not served)."""
    model = write_test_model(tmp_path / "model")
    h = copy_of(home, tmp_path)
    served = engine_ids(h, model_dir=str(model))
    indexed = {r.precision: r for r in records(h) if r.model == "tiny-user"}
    assert sorted(p.value for p in indexed) == ["fp32", "int8"]
    users = {k: t for k, t in served.items() if k.startswith("tiny-user-")}
    expected = ["fp32"] + (["int8"] if gate_refusal(indexed[Precision.INT8]) is None else [])
    assert sorted(k.split("-")[3] for k in users) == expected
    assert all(isinstance(t, HFTokenizer) for t in users.values())
    assert len(served) == 2 + len(expected)


def test_an_int8_build_that_fails_the_gate_is_indexed_but_not_served(tmp_path: Path) -> None:
    """An INT8 record whose gate failed (its verdict rewritten to a drift failure, so the test
    does not hang on a speed measurement) is shown as refused and not served."""
    model = write_test_model(tmp_path / "model")
    h = tmp_path / "h"
    store = EngineStore(h)
    try:
        args = BuildArgs(str(model), "onnxruntime", Precision.INT8, 16, 128)
        record = build_engine(args, store, models_dir=h / "models")
        reasons = ["greedy agreement 50.0% is below 90%"]
        failed = {**record.options["gate"], "passed": False, "reasons": reasons}
        staging = store.staging()
        shutil.copytree(store.path(record), staging, dirs_exist_ok=True)
        store.put(staging, replace(record, options={**record.options, "gate": failed}))
        assert engine_status(store, store.get(record.engine_id)).startswith("refused: greedy agreement 50.0%")
    finally:
        store.close()
    served = engine_ids(h, model_dir=str(model))
    assert not any(k.startswith("tiny-user-onnxruntime-int8") for k in served)


def test_the_builtin_int8_serves_exactly_when_its_gate_passed(home: Path) -> None:
    """The built-in INT8 build carries its gate figures and is served iff it passed (tiny-gpt's
    weight-only INT8 measured 1.05-1.2x faster than FP32 here with 100 % agreement, so it
    normally serves)."""
    (int8,) = [r for r in records(home) if r.precision == Precision.INT8]
    gate = int8.options["gate"]
    assert gate["token_agreement"] >= 0.9 and gate["max_logit_diff"] <= 4.0
    assert (int8.engine_id in engine_ids(home)) == (gate_refusal(int8) is None)


def test_engines_built_by_hand_are_served_from_the_index(home: Path, tmp_path: Path) -> None:
    """An engine built with `engines build` for another model is loaded at start."""
    h = copy_of(home, tmp_path)
    model = write_test_model(tmp_path / "model", name="other-model")
    store = EngineStore(h)
    built = build_engine(
        BuildArgs(str(model), "onnxruntime", Precision.FP16, 4, 128), store, models_dir=h / "models"
    )
    store.close()
    assert built.engine_id in engine_ids(h)


def test_a_tampered_default_engine_is_rebuilt(
    home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A changed built-in artifact is refused and rebuilt at start, with a warning."""
    h = copy_of(home, tmp_path)
    store = EngineStore(h)
    fp32 = next(r for r in store.list() if r.precision == Precision.FP32)
    (store.path(fp32) / "model.onnx").write_bytes(b"not a graph")
    store.close()
    with caplog.at_level(logging.WARNING, logger="infermeter.app.engines"):
        served = engine_ids(h)
    assert fp32.engine_id in served  # same bytes again, so the same engine id
    assert "rebuilding" in caplog.text and "changed after the build" in caplog.text
    assert file_sha256([EngineStore(h).path(fp32) / "model.onnx"]) == fp32.sha256


def test_a_stale_extra_engine_is_skipped_naming_its_rebuild(
    home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken engine that serve did not build itself is not served; the log says why."""
    h = copy_of(home, tmp_path)
    model = write_test_model(tmp_path / "model", name="other-model")
    store = EngineStore(h)
    built = build_engine(
        BuildArgs(str(model), "onnxruntime", Precision.FP32, 4, 128), store, models_dir=h / "models"
    )
    (store.path(built) / "model.onnx").write_bytes(b"x")
    assert engine_status(store, built).startswith("stale: ")
    store.close()
    with caplog.at_level(logging.WARNING, logger="infermeter.app.engines"):
        served = engine_ids(h)
    assert built.engine_id not in served and len(served) == 2
    assert f"infermeter engines build {model}" in caplog.text


def test_a_foreign_engine_is_reported_not_served(home: Path, tmp_path: Path) -> None:
    """A TensorRT engine on a machine without TensorRT is foreign: listed, not loaded."""
    h = copy_of(home, tmp_path)
    store = EngineStore(h)
    fp32 = next(r for r in store.list() if r.precision == Precision.FP32)
    staging = store.staging()
    (staging / "model.plan").write_bytes(b"plan bytes")
    plan = replace(
        fp32,
        backend="tensorrt",
        runtime="tensorrt",
        artifact="model.plan",
        device="cuda",
        engine_id="tiny-gpt-tensorrt-fp16-cuda-0",
        precision=Precision.FP16,
        sha256=file_sha256([staging / "model.plan"]),
    )
    store.put(staging, plan)
    status = engine_status(store, plan)
    store.close()
    if importlib.util.find_spec("tensorrt") is None:
        assert status == "foreign: needs tensorrt on cuda"
        assert plan.engine_id not in engine_ids(h)
    else:  # pragma: no cover - a TensorRT machine refuses the fake plan some other way
        assert status != "ok"


def test_stale_default_engine_errors_are_raised_not_hidden(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If a default engine cannot load even after building, serve fails with the reason."""
    import infermeter.app.engines as engines

    def refuse(*args: object, **kwargs: object) -> object:
        raise StaleEngine("engine x is stale; rebuild it with `infermeter engines build`")

    monkeypatch.setattr(engines, "load_engine", refuse)
    with pytest.raises(StaleEngine, match="rebuild it"):
        engine_ids(copy_of(home, tmp_path))

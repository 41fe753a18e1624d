"""build_engine: staged builds of FP32/FP16/INT8 (and torch) engines into the store."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnxruntime as ort  # type: ignore[import-untyped]  # ships no type information
import pytest

from infermeter.app.engines import gate_refusal
from infermeter.core.errors import ConfigError
from infermeter.core.types import Precision
from infermeter.runtime.builtin_model import BUILTIN_MODEL_NAME
from infermeter.runtime.compile import economy_gate
from infermeter.runtime.compile.builder import build_engine, resolve_source, source_spec
from infermeter.runtime.compile.drift import DRIFT_PROMPTS
from infermeter.runtime.compile.metadata import BuildArgs, EngineRecord
from infermeter.runtime.compile.testmodel import write_test_model
from infermeter.runtime.engine_store import EngineStore, file_sha256, onnxruntime_env

HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineStore]:
    s = EngineStore(tmp_path_factory.mktemp("home"))
    yield s
    s.close()


def build(
    store: EngineStore,
    source: Path | str,
    precision: Precision,
    backend: str = "onnxruntime",
    ctx: int = 128,
    **kw: Any,
) -> EngineRecord:
    args = BuildArgs(source_spec(str(source)), backend, precision, 4, ctx, **kw)
    return build_engine(args, store, models_dir=store.home / "models")


@pytest.fixture(scope="module")
def fp32(store: EngineStore, user_model: Path) -> EngineRecord:
    return build(store, user_model, Precision.FP32)


@pytest.fixture(scope="module")
def int8(store: EngineStore, user_model: Path) -> EngineRecord:
    return build(store, user_model, Precision.INT8)


def test_fp32_engine_is_the_source_graph_with_its_serving_files(
    store: EngineStore, fp32: EngineRecord, user_model: Path
) -> None:
    """FP32 on ONNX Runtime: the graph byte for byte, config and tokenizer beside it."""
    path = store.check(fp32, onnxruntime_env())
    assert (path / "model.onnx").read_bytes() == (user_model / "model.onnx").read_bytes()
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "metadata.json"} <= {
        p.name for p in path.iterdir()
    }
    assert fp32.sha256 == fp32.source_sha256 == file_sha256([path / "model.onnx"])
    assert fp32.drift is None


def test_record_carries_the_build_facts(fp32: EngineRecord) -> None:
    """Model, limits, profiles, versions, device and timing are all recorded."""
    assert (fp32.model, fp32.backend, fp32.precision) == ("tiny-user", "onnxruntime", Precision.FP32)
    assert (fp32.max_batch, fp32.max_seq_len) == (4, 128)
    assert [p.name for p in fp32.profiles] == ["prefill", "decode-past-127"]
    assert fp32.runtime == "onnxruntime" and fp32.runtime_version == ort.__version__
    assert fp32.builder_versions["onnxruntime"] == ort.__version__
    assert fp32.device == "cpu" and fp32.compute_capability is None and fp32.device_name
    assert fp32.build_seconds >= 0 and fp32.built_at.endswith("+00:00")
    assert fp32.options["dims"]["num_layers"] == 2 and fp32.options["dims"]["kv_bytes_per_element"] == 4
    assert fp32.cost_model["version"] == "token-proportional-v1"


def test_int8_engine_is_weight_only_with_its_gate_and_drift_stored(
    store: EngineStore, int8: EngineRecord, fp32: EngineRecord
) -> None:
    """INT8: a different artifact, the MatMulNBits recipe, and the gate's figures and drift."""
    assert int8.sha256 != fp32.sha256 and int8.source_sha256 == fp32.sha256
    assert int8.options["format"] == "MatMulNBits" and int8.options["quantized_nodes"] > 0
    assert int8.options["calibration"] is None
    gate = economy_gate.GateReport.from_json(int8.options["gate"])
    assert gate.prompts == len(DRIFT_PROMPTS) and gate.positions > 0 and not gate.forced
    assert gate.ms_per_token > 0 and gate.fp32_ms_per_token > 0
    assert int8.drift == gate.drift and int8.drift.token_agreement > 0.9
    stored = json.loads((store.path(int8) / "metadata.json").read_text())
    assert stored["options"]["gate"] == int8.options["gate"]
    assert {r.engine_id for r in store.list("tiny-user")} >= {int8.engine_id, fp32.engine_id}


def test_the_gate_verdict_follows_its_figures(int8: EngineRecord) -> None:
    """The record's verdict is the thresholds applied to its own measured figures."""
    gate = economy_gate.GateReport.from_json(int8.options["gate"])
    again = economy_gate.decide(
        gate.token_agreement, gate.max_logit_diff, gate.ms_per_token, gate.fp32_ms_per_token,
        prompts=gate.prompts, positions=gate.positions,
    )  # fmt: skip
    assert (again.passed, again.reasons) == (gate.passed, gate.reasons)


def test_a_forced_int8_build_serves_whatever_its_figures(store: EngineStore, user_model: Path) -> None:
    """force=True records the figures and marks the build forced, so the gate never refuses it."""
    args = BuildArgs(source_spec(str(user_model)), "onnxruntime", Precision.INT8, 4, 128)
    record = build_engine(args, store, models_dir=store.home / "models", force=True)
    assert record.options["gate"]["forced"] is True and gate_refusal(record) is None


def test_an_identical_rebuild_is_the_same_engine(
    store: EngineStore, user_model: Path, int8: EngineRecord
) -> None:
    """Builds are deterministic: same inputs, same sha256, one index row."""
    again = build(store, user_model, Precision.INT8)
    assert again.sha256 == int8.sha256
    assert sum(r.sha256 == int8.sha256 for r in store.list()) == 1


def test_a_calibration_file_is_refused_where_no_calibration_is_used(
    store: EngineStore, user_model: Path, tmp_path: Path
) -> None:
    """--calibration on ONNX Runtime's weight-only INT8 is an error naming the fix."""
    cal = tmp_path / "cal.txt"
    cal.write_text("Tenants pay for flex requests.\n\nThe quick brown fox jumps.\n")
    with pytest.raises(ConfigError, match=r"TensorRT's static Q/DQ INT8 only.*drop --calibration"):
        build(store, user_model, Precision.INT8, calibration=str(cal))


def test_fp16_engine_halves_the_kv_cache(store: EngineStore, user_model: Path) -> None:
    """FP16 on ONNX Runtime: a converted graph with 2-byte KV elements."""
    record = build(store, user_model, Precision.FP16)
    assert record.options["dims"]["kv_bytes_per_element"] == 2
    assert record.options["fp32_ops"][:2] == ["LayerNormalization", "SimplifiedLayerNormalization"]


def test_the_builtin_model_builds_by_name(store: EngineStore) -> None:
    """'tiny-gpt' writes the built-in model under models/ and builds from it."""
    record = build(store, BUILTIN_MODEL_NAME, Precision.FP32, ctx=256)
    assert record.model == BUILTIN_MODEL_NAME and record.max_seq_len == 256
    assert (store.home / "models" / BUILTIN_MODEL_NAME / "model.onnx").is_file()
    assert record.build.source == BUILTIN_MODEL_NAME


@pytest.mark.parametrize(
    ("backend", "precision", "match"),
    [
        ("torch", Precision.INT8, "torch builds fp32, fp16, bf16"),
        ("onnxruntime", Precision.BF16, "onnxruntime builds fp32, fp16, int8"),
        ("vllm", Precision.FP32, "backend 'vllm' is unknown"),
    ],
)
def test_unsupported_backend_and_precision_pairs_are_refused(
    store: EngineStore, user_model: Path, backend: str, precision: Precision, match: str
) -> None:
    """Each backend names the precisions it builds."""
    with pytest.raises(ConfigError, match=match):
        build(store, user_model, precision, backend)


def test_limits_beyond_the_model_and_bad_sources_are_refused(store: EngineStore, user_model: Path) -> None:
    """A context longer than the model's, or a path that is no model, is a ConfigError."""
    with pytest.raises(ConfigError, match="exceeds the context of tiny-user"):
        build(store, user_model, Precision.FP32, ctx=4096)
    with pytest.raises(ConfigError, match="neither 'tiny-gpt', a model directory nor"):
        resolve_source("/no/such/thing", store.home)
    with pytest.raises(ConfigError, match=r"has no model\.onnx"):
        resolve_source(str(store.home), store.home)


def test_a_failed_build_leaves_nothing_behind(store: EngineStore, tmp_path: Path) -> None:
    """A build that fails half way (its tokenizer unreadable at the gate) leaves no staging
    directory and no index row."""
    broken = write_test_model(tmp_path / "broken", name="broken-model")
    (broken / "tokenizer.json").write_text('{"version": "1.0"}')
    before = store.list()
    with pytest.raises(Exception, match="Model missing"):  # the tokenizers library's own error
        build(store, broken, Precision.INT8)
    assert store.list() == before
    assert not list((store.root / ".staging").iterdir())


def test_an_onnx_file_source_uses_its_directory(store: EngineStore, user_model: Path) -> None:
    """Pointing at model.onnx finds config.json and the tokenizer beside it."""
    source = resolve_source(str(user_model / "model.onnx"), store.home)
    assert source.model_dir == user_model.resolve() and source.name == "tiny-user"


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (pip install 'infermeter[torch]')")
def test_torch_engines_store_weights_in_their_precision(store: EngineStore, user_model: Path) -> None:
    """torch: weights.npz per precision, deterministic bytes, distinct shas."""
    fp16 = build(store, user_model, Precision.FP16, "torch")
    bf16 = build(store, user_model, Precision.BF16, "torch")
    assert fp16.artifact == bf16.artifact == "weights.npz"
    assert fp16.sha256 != bf16.sha256
    assert build(store, user_model, Precision.FP16, "torch").sha256 == fp16.sha256
    assert fp16.runtime == "torch" and fp16.device == "cpu"
